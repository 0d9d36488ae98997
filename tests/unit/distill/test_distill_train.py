"""Training loop, losses, schedule and persistence of the distillation networks.

The learning tests use small synthetic cross-modal relations (a fixed random nonlinear map
between the two sides) and check held-out predictions against the mean-target baseline.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from cmdiad.config import DistillConfig, replace
from cmdiad.distill.networks import FeatureToFeature, FeatureToInput, InputToFeature
from cmdiad.distill.train import (
    _batches,
    design_config,
    fit_distiller,
    load_distiller,
    patch_l2,
    save_distiller,
    split_indices,
    warmup_lr,
    xyz_l2,
)
from cmdiad.errors import ModelFileError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mean_baseline(train_targets: torch.Tensor, test_targets: torch.Tensor) -> float:
    """Loss of always predicting the mean training target (per channel and position)."""
    mean = train_targets.mean(dim=0, keepdim=True).expand_as(test_targets)
    return float(patch_l2(mean, test_targets))


# ---------------------------------------------------------------- losses


def test_losses_are_exactly_zero_for_identical_prediction() -> None:
    x = torch.randn(2, 5, 3, 4)
    assert patch_l2(x, x) == 0
    assert patch_l2(x, x, torch.rand(2, 3, 4) > 0.5) == 0
    target = torch.randn(2, 3, 6, 7)
    target[:, :, :2] = 0
    has_point = (target != 0).any(dim=1, keepdim=True)
    pred = torch.cat([target, torch.where(has_point, 1e4, -1e4)], dim=1)
    assert xyz_l2(pred, target) == 0


def test_patch_l2_is_mean_norm_over_valid_positions_and_grid_independent() -> None:
    target = torch.zeros(1, 2, 2, 2)
    pred = target.clone()
    pred[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    valid = torch.tensor([[[True, True], [False, False]]])
    assert patch_l2(pred, target, valid) == pytest.approx(2.5)
    assert patch_l2(pred, target) == pytest.approx(1.25)
    big = torch.zeros(1, 2, 8, 8)
    big[0, 0] = 1.0
    small = torch.zeros(1, 2, 2, 2)
    small[0, 0] = 1.0
    assert patch_l2(big, torch.zeros_like(big)) == patch_l2(small, torch.zeros_like(small)) == 1


def test_xyz_l2_is_unit_free_and_counts_validity() -> None:
    rng = _gen(3)
    target = torch.randn(2, 3, 5, 6, generator=rng)
    target[:, :, :2] = 0
    pred = torch.cat([target + 0.1 * torch.randn(2, 3, 5, 6, generator=rng), torch.zeros(2, 1, 5, 6)], 1)
    scaled = torch.cat([pred[:, :3] * 1000, pred[:, 3:]], dim=1)
    torch.testing.assert_close(xyz_l2(scaled, target * 1000), xyz_l2(pred, target))
    coord_only = xyz_l2(pred, target, bce_weight=0.0)
    assert xyz_l2(pred, target) == pytest.approx(float(coord_only) + float(torch.log(torch.tensor(2.0))))


# ---------------------------------------------------------------- schedule, split, batches


def test_warmup_is_linear_per_iteration_then_constant() -> None:
    cfg = DistillConfig(lr=1e-3, warmup_epochs=2)
    lrs = [warmup_lr(s, 5, cfg) for s in range(12)]
    assert lrs[:10] == pytest.approx([1e-4 * (k + 1) for k in range(10)])
    assert lrs[10:] == [1e-3, 1e-3]
    assert warmup_lr(0, 5, DistillConfig(lr=2e-4, warmup_epochs=0)) == 2e-4


@pytest.mark.parametrize(
    "n,frac,expected", [(4, 0.5, 0), (5, 0.1, 1), (20, 0.25, 5), (6, 0.95, 5), (9, 0.0, 0)]
)
def test_split_holds_out_samples(n: int, frac: float, expected: int) -> None:
    train, val = split_indices(n, frac, _gen(1))
    assert len(val) == expected and len(train) == n - expected
    assert sorted(torch.cat([train, val]).tolist()) == list(range(n))
    assert torch.equal(val, split_indices(n, frac, _gen(1))[1])


def test_last_batch_dropped_only_when_an_epoch_has_several() -> None:
    assert [len(b) for b in _batches(torch.arange(10), 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in _batches(torch.arange(3), 4, drop_last=True)] == [3]
    assert [len(b) for b in _batches(torch.arange(8), 4, drop_last=True)] == [4, 4]


# ---------------------------------------------------------------- learning


def _features(n: int, channels: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """Random features, standardised per patch as high-dimensional backbone features roughly are.

    (The reference F2F starts with a LayerNorm, so per-patch mean and scale are not inputs.)
    """
    x = torch.randn(n, channels, *grid, generator=_gen(seed))
    return (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True, unbiased=False)


def _relation(x: torch.Tensor, out: int, seed: int) -> torch.Tensor:
    """A fixed random nonlinear per-patch map ``(N, C, h, w) -> (N, out, h, w)``, >= 0."""
    g = _gen(seed)
    a = torch.randn(16, x.shape[1], generator=g) / x.shape[1] ** 0.5
    b = torch.randn(out, 16, generator=g) / 4
    h = torch.tanh(torch.einsum("kc,nchw->nkhw", a, x))
    return F.softplus(torch.einsum("ok,nkhw->nohw", b, h))


def test_f2f_learns_a_cross_modal_relation_and_generalises() -> None:
    x, x_test = _features(48, 8, (3, 4), 0), _features(16, 8, (3, 4), 2)
    y, y_test = _relation(x, 5, seed=1), _relation(x_test, 5, seed=1)
    cfg = DistillConfig(epochs=30, batch_size=8, lr=1e-2, warmup_epochs=1, val_fraction=0.2, seed=0)
    net = FeatureToFeature(8, 5)
    seen = []
    report = fit_distiller(
        net, x, y, loss="patch_l2", cfg=cfg, device="cpu", progress=lambda *a: seen.append(a)
    )
    assert len(report.train_loss) == len(report.val_loss) == len(seen) == 30
    assert seen[-1] == (29, report.train_loss[-1], report.val_loss[-1])
    assert report.num_val == 10 and report.num_train == 38
    assert report.train_loss[-1] < 0.3 * report.train_loss[0]
    assert report.val_loss[-1] < 0.3 * report.val_loss[0]
    assert not net.training
    with torch.no_grad():
        err = float(patch_l2(net(x_test), y_test))
    assert err < 0.5 * _mean_baseline(y, y_test)


def test_f2f_identity_distillation_error_goes_to_zero() -> None:
    x = _features(32, 6, (3, 3), 4)
    cfg = DistillConfig(epochs=60, batch_size=8, lr=1e-2, warmup_epochs=1, val_fraction=0.0, seed=1)
    net = FeatureToFeature(6, 6, final_activation=False)
    report = fit_distiller(net, x, x, loss="patch_l2", cfg=cfg, device="cpu")
    assert report.val_loss == [] and report.num_val == 0
    assert report.train_loss[-1] < 0.1 * report.train_loss[0]


def _images_from_features(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    proj = torch.randn(3, x.shape[1], generator=_gen(5))
    img = torch.tanh(torch.einsum("kc,nchw->nkhw", proj, x))
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False)


def test_f2i_learns_images_from_features() -> None:
    x, x_test = _features(40, 6, (3, 4), 6), _features(12, 6, (3, 4), 7)
    y, y_test = _images_from_features(x, (13, 17)), _images_from_features(x_test, (13, 17))
    cfg = DistillConfig(epochs=30, batch_size=8, lr=1e-2, warmup_epochs=1, val_fraction=0.1, seed=0)
    net = FeatureToInput(6, 3, scale=(13 / 3, 17 / 4), width=8, output_size=(13, 17))
    report = fit_distiller(net, x, y, loss="pixel_l2", cfg=cfg, device="cpu")
    assert report.train_loss[-1] < 0.5 * report.train_loss[0]
    with torch.no_grad():
        err = float(patch_l2(net(x_test), y_test))
    assert err < 0.6 * _mean_baseline(y, y_test)


def _clouds_from_features(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Coordinates in scanner-like units with a background where feature 0 is negative."""
    coords = _images_from_features(x, size) * 20.0 + torch.tensor([0.0, 0.0, 400.0]).view(1, 3, 1, 1)
    has_point = F.interpolate(x[:, :1], size=size, mode="bilinear", align_corners=False) > 0
    return coords * has_point


def test_f2i_learns_organized_clouds_with_a_background() -> None:
    x, x_test = _features(40, 6, (3, 4), 8), _features(12, 6, (3, 4), 9)
    y, y_test = _clouds_from_features(x, (12, 16)), _clouds_from_features(x_test, (12, 16))
    cfg = DistillConfig(epochs=30, batch_size=8, lr=1e-2, warmup_epochs=1, val_fraction=0.1, seed=0)
    net = FeatureToInput(6, 4, scale=4, width=8)
    report = fit_distiller(net, x, y, loss="xyz_l2", cfg=cfg, device="cpu")
    assert report.train_loss[-1] < 0.5 * report.train_loss[0]
    with torch.no_grad():
        cloud = net.generate(x_test)
    truth, got = (y_test != 0).any(dim=1), (cloud != 0).any(dim=1)
    assert (truth == got).float().mean() > 0.85
    both = (truth & got).unsqueeze(1)
    err = (cloud - y_test).norm(dim=1, keepdim=True)[both].mean()
    mean_point = (y.sum(dim=(0, 2, 3)) / (y != 0).any(dim=1).sum()).view(1, 3, 1, 1)
    assert err < 0.7 * (mean_point - y_test).norm(dim=1, keepdim=True)[both].mean()


def _features_from_images(img: torch.Tensor, stride: int) -> torch.Tensor:
    proj = torch.randn(5, 3, generator=_gen(10))
    return F.avg_pool2d(torch.tanh(torch.einsum("kc,nchw->nkhw", proj, img) * 2), stride) * 10


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    return F.interpolate(torch.randn(n, 3, 4, 5, generator=_gen(seed)), size=(16, 20), mode="bilinear")


def test_i2f_learns_features_from_images() -> None:
    img, img_test = _smooth_images(48, 11), _smooth_images(12, 12)
    y, y_test = _features_from_images(img, 4), _features_from_images(img_test, 4)
    cfg = DistillConfig(epochs=30, batch_size=8, lr=1e-2, warmup_epochs=1, val_fraction=0.1, seed=0)
    net = InputToFeature(3, 5, stride=4, width=4, num_blocks=1)
    report = fit_distiller(net, img, y, loss="patch_l2", cfg=cfg, device="cpu")
    assert report.train_loss[-1] < 0.5 * report.train_loss[0]
    with torch.no_grad():
        pred = net(img_test)
    assert pred.shape == y_test.shape
    assert float(patch_l2(pred, y_test)) < 0.5 * _mean_baseline(y, y_test)


# ---------------------------------------------------------------- determinism, persistence


def _tiny_fit(seed: int) -> tuple[FeatureToFeature, list[float]]:
    x = torch.randn(12, 4, 2, 3, generator=_gen(0))
    torch.manual_seed(0)
    net = FeatureToFeature(4, 3)
    cfg = DistillConfig(epochs=3, batch_size=4, lr=1e-3, warmup_epochs=1, seed=seed)
    report = fit_distiller(net, x, x[:, :3].abs(), loss="patch_l2", cfg=cfg, device="cpu")
    return net, report.train_loss + report.val_loss


def test_training_is_deterministic_under_the_seed() -> None:
    (net_a, loss_a), (net_b, loss_b), (_, loss_c) = _tiny_fit(5), _tiny_fit(5), _tiny_fit(6)
    assert loss_a == loss_b and loss_a != loss_c
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def _calibrated_nets() -> list[torch.nn.Module]:
    f2i = FeatureToInput(4, 4, scale=(3.0, 2.5), width=4, output_size=(6, 10))
    f2i.calibrate([(torch.randn(2, 4, 6, 10) * 5 + 3, None)])
    i2f = InputToFeature(3, 5, stride=2, width=4, num_blocks=1, input_is_xyz=True)
    i2f.calibrate([(torch.randn(2, 5, 4, 5) + 2, torch.rand(2, 4, 5) > 0.3)])
    return [FeatureToFeature(4, 3, hidden_ratio=1.5, final_activation=False), f2i, i2f]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, index: int) -> None:
    net = _calibrated_nets()[index].eval()
    x = torch.randn(2, 3, 8, 10) if index == 2 else torch.randn(2, 4, 2, 4)
    save_distiller(net, tmp_path / "net")
    loaded = load_distiller(tmp_path / "net", "cpu")
    assert type(loaded) is type(net) and not loaded.training
    assert loaded.init_kwargs == json.loads(json.dumps(net.init_kwargs))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_load_rejects_corrupt_foreign_and_mismatched_files(tmp_path) -> None:
    save_distiller(FeatureToFeature(4, 3), tmp_path / "ok")
    weights, meta = tmp_path / "ok" / "distiller.safetensors", tmp_path / "ok" / "distiller.json"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ModelFileError, match="distiller.safetensors"):
        load_distiller(tmp_path / "ok")
    with pytest.raises(ModelFileError, match="distiller.json"):
        load_distiller(tmp_path / "missing")
    save_distiller(FeatureToFeature(4, 3), tmp_path / "bad")
    data = json.loads((tmp_path / "bad" / "distiller.json").read_text())
    data["kwargs"]["in_channels"] = 7
    (tmp_path / "bad" / "distiller.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="distiller.safetensors"):
        load_distiller(tmp_path / "bad")
    meta.write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(ModelFileError, match="not a cmdiad distiller"):
        load_distiller(tmp_path / "ok")
    meta.write_text("{not json")
    with pytest.raises(ModelFileError, match="distiller.json"):
        load_distiller(tmp_path / "ok")


def test_fit_rejects_unknown_loss_and_mismatched_lengths() -> None:
    net, x = FeatureToFeature(4, 4), torch.randn(6, 4, 2, 2)
    with pytest.raises(ValueError, match="unknown loss"):
        fit_distiller(net, x, x, loss="l1", cfg=DistillConfig(), device="cpu")
    with pytest.raises(ValueError, match="matching"):
        fit_distiller(net, x, x[:5], loss="patch_l2", cfg=DistillConfig(), device="cpu")


def test_fit_ignores_invalid_target_patches() -> None:
    x = _features(10, 4, (2, 3), 13)
    y = _relation(x, 3, seed=2)
    valid = torch.zeros(10, 2, 3, dtype=torch.bool)
    valid[:, 0] = True
    y[~valid.unsqueeze(1).expand_as(y)] = 1e6  # garbage where there is no target
    cfg = DistillConfig(epochs=5, batch_size=4, lr=1e-2, warmup_epochs=0, val_fraction=0.2)
    report = fit_distiller(FeatureToFeature(4, 3), x, y, loss="patch_l2", cfg=cfg, device="cpu", valid=valid)
    assert max(report.train_loss + report.val_loss) < 10


def test_xyz_l2_stays_finite_for_single_point_clouds() -> None:
    target = torch.zeros(2, 3, 4, 4)
    target[:, :, 1, 1] = torch.tensor([1.0, 2.0, 3.0])
    pred = torch.cat([target + 0.5, torch.zeros(2, 1, 4, 4)], dim=1)
    assert xyz_l2(pred, target, bce_weight=0.0) == pytest.approx(0.5 * 3**0.5)


# ---------------------------------------------------------------- reference protocol switches


def test_masked_loss_off_counts_every_position_like_the_reference() -> None:
    x = _features(10, 4, (2, 3), 13)
    y = _relation(x, 3, seed=2)
    valid = torch.zeros(10, 2, 3, dtype=torch.bool)
    valid[:, 0] = True
    y[~valid.unsqueeze(1).expand_as(y)] = 1e6
    cfg = DistillConfig(epochs=1, batch_size=5, lr=1e-3, warmup_epochs=0, val_fraction=0.0, masked_loss=False)
    report = fit_distiller(FeatureToFeature(4, 3), x, y, loss="patch_l2", cfg=cfg, device="cpu", valid=valid)
    assert report.train_loss[0] > 1e5  # the garbage positions count


def test_val_fraction_zero_trains_on_every_sample() -> None:
    x = _features(12, 4, (2, 2), 3)
    cfg = DistillConfig(epochs=2, batch_size=4, warmup_epochs=0, val_fraction=0.0)
    report = fit_distiller(FeatureToFeature(4, 4), x, x, loss="patch_l2", cfg=cfg, device="cpu")
    assert (report.num_train, report.num_val, report.val_loss) == (12, 0, [])
    assert len(report.train_loss) == 2


def test_warmup_from_zero_starts_at_lr_zero() -> None:
    cfg = DistillConfig(lr=1e-3, warmup_epochs=2, warmup_from_zero=True)
    lrs = [warmup_lr(s, 5, cfg) for s in range(11)]
    assert lrs[:10] == pytest.approx([1e-4 * k for k in range(10)]) and lrs[10] == 1e-3


def test_design_config_gives_i2f_its_own_learning_rates() -> None:
    cfg = DistillConfig(lr=5e-4, i2f_lr_main_xyz=3e-4, i2f_lr_main_rgb=2e-4)
    assert design_config(cfg, "i2f", "xyz").lr == 3e-4 and design_config(cfg, "i2f", "rgb").lr == 2e-4
    assert design_config(cfg, "f2f", "xyz") is cfg and design_config(cfg, "f2i", "rgb").lr == 5e-4
    assert design_config(DistillConfig(lr=1e-3), "i2f", "xyz").lr == 1e-3


def test_loss_sum_over_positions_scales_the_loss_by_the_grid() -> None:
    x = _features(8, 4, (3, 5), 4)
    y = _relation(x, 3, seed=5)
    base = DistillConfig(epochs=1, batch_size=4, lr=1e-3, warmup_epochs=0, val_fraction=0.25)
    torch.manual_seed(0)
    mean = fit_distiller(FeatureToFeature(4, 3), x, y, loss="patch_l2", cfg=base, device="cpu")
    torch.manual_seed(0)
    summed = fit_distiller(FeatureToFeature(4, 3), x, y, loss="patch_l2", device="cpu",
                           cfg=replace(base, loss_sum_over_positions=True))
    # Same initialisation and data; Adam is invariant to the loss scale up to its epsilon.
    assert summed.train_loss[0] == pytest.approx(15 * mean.train_loss[0], rel=1e-3)
    assert summed.val_loss[0] == pytest.approx(15 * mean.val_loss[0], rel=1e-3)
