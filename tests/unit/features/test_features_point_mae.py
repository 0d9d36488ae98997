"""Point-MAE extractor: contract, background handling, checkpoint loading, train-mode quirk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import PointFeatureConfig, from_dict, replace
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.features.base import EXTRACTORS
from cmdiad.features.grouping import interpolate_to_points, interpolation_weights, scatter_to_grid
from cmdiad.features.point_mae import (
    GroupEncoder,
    PointMAEEncoder,
    PointMAEExtractor,
    build_point_mae,
    load_encoder_weights,
    patch_operator,
)

TINY = {"pretrained": False, "num_groups": 32, "group_size": 16, "patch_stride": 4}


def organized_scene(h: int, w: int, border: int = 4, bump: bool = False) -> torch.Tensor:
    """``(3, h, w)`` pinhole-projected plane at z = 0.6 with a zero border (and a bump)."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    z = np.full((h, w), 0.6)
    if bump:
        z -= 0.02 * np.exp(-(((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (min(h, w) / 6) ** 2))
    xyz = np.stack([(xx - w / 2) / 200 * z, (yy - h / 2) / 200 * z, z], axis=-1)
    xyz[:border], xyz[:, :border] = 0, 0
    return torch.tensor(xyz, dtype=torch.float32).permute(2, 0, 1)


@pytest.fixture(scope="module")
def source_model() -> PointMAEEncoder:
    torch.manual_seed(1)
    return PointMAEEncoder()


def small_backbone() -> PointMAEEncoder:
    """A narrow, 4-block encoder (output block 3 only) to keep the behaviour tests fast."""
    return PointMAEEncoder(dim=48, depth=4, num_heads=4)


def test_registered_and_contract_on_non_square_input() -> None:
    ext = EXTRACTORS.get("point_mae")(PointFeatureConfig(**TINY))
    # 42 x 58 does not divide by the stride: adaptive windows; a 5-pixel border empties row/col 0
    x = torch.stack([organized_scene(42, 58, border=5), organized_scene(42, 58, border=5, bump=True)])
    pf = ext.patch_features(x)
    info = ext.feature_info[0]
    assert ext.out_channels == info.num_chs == 2 * 384 and info.reduction == ext.patch_stride == 4
    assert pf.features.shape == (2, info.num_chs, 42 // 4, 58 // 4)
    assert pf.grid == ext.grid_size((42, 58))
    assert not pf.features.isnan().any()
    assert ext.forward(x)["xyz"].shape == pf.features.shape
    assert not pf.valid[:, 0].any() and pf.valid[:, 1:, 1:].all()  # the zero border rows/cols


def test_background_patches_invalid_and_zero() -> None:
    ext = PointMAEExtractor(PointFeatureConfig(**TINY), small_backbone())
    x = torch.stack([organized_scene(32, 40), torch.zeros(3, 32, 40)])
    x[0, :, 16:] = 0  # bottom half background
    pf = ext.patch_features(x)
    assert pf.valid[0, 1:4, 1:].all() and not pf.valid[1].any()
    assert not pf.valid[0, 4:].any() and not pf.valid[0, 0].any() and not pf.valid[0, :, 0].any()
    assert pf.features[1].abs().sum() == 0 and pf.features[0, :, 4:].abs().sum() == 0
    assert pf.features[0, :, 0].abs().sum() == 0 and pf.features[0, :, :, 0].abs().sum() == 0
    assert pf.features[0, :, 1:4, 1:].abs().sum(0).min() > 0


def test_fewer_points_than_groups_is_clamped() -> None:
    ext = PointMAEExtractor(PointFeatureConfig(**TINY), small_backbone())
    assert ext.out_channels == 48
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 5, 3:8] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1) + torch.arange(5.0)  # 5 points
    pf = ext.patch_features(x)
    assert pf.valid[0].sum() == 2 and torch.isfinite(pf.features).all()


def test_average_padding_config_switches_the_reference_shift() -> None:
    x = organized_scene(32, 32, bump=True).unsqueeze(0)
    cfg = PointFeatureConfig(**TINY)
    backbone = small_backbone()
    a = PointMAEExtractor(cfg, backbone).patch_features(x).features
    b = PointMAEExtractor(replace(cfg, average_padding=0), backbone).patch_features(x).features
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="average_padding"):
        from_dict(PointFeatureConfig, {"average_padding": 2})


@pytest.mark.parametrize("padding", [1, 0])
@pytest.mark.parametrize(("size", "grid"), [((24, 32), (6, 8)), ((21, 30), (4, 7)), ((9, 10), (9, 10))])
def test_patch_operator_equals_interpolate_scatter_pool(
    rng: np.random.Generator, padding: int, size: tuple[int, int], grid: tuple[int, int]
) -> None:
    """The composed operator equals the literal pipeline of method-spec §2.3."""
    fg = torch.tensor(rng.uniform(size=size) < 0.6)
    flat = fg.flatten().nonzero().squeeze(1)
    points = torch.tensor(rng.normal(size=(1, flat.numel(), 3)), dtype=torch.float32)
    centres = points[:, :7]
    feats = torch.randn(1, 5, 7)
    pixels = scatter_to_grid(interpolate_to_points(points, centres, feats)[0], flat, size)
    smooth = torch.nn.functional.avg_pool2d(pixels.unsqueeze(0), 3, stride=1, padding=padding)
    want = torch.nn.functional.adaptive_avg_pool2d(smooth, grid)[0]
    idx, w = interpolation_weights(points, centres)
    got = (patch_operator(flat, size, grid, idx[0], w[0], 7, padding) @ feats[0].T).T.reshape(5, *grid)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_group_encoder_equals_concatenated_formulation() -> None:
    enc = GroupEncoder(384)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    groups = torch.randn(2, 5, 7, 3)
    for train in (False, True):
        enc.train(train)
        local = enc.first_conv(groups.reshape(10, 7, 3).transpose(1, 2))
        cat = torch.cat([local.amax(2, keepdim=True).expand(-1, -1, 7), local], dim=1)
        want = enc.second_conv(cat).amax(2).view(2, 5, -1)
        torch.testing.assert_close(enc(groups), want, rtol=1e-4, atol=1e-5)


def test_train_mode_quirk_is_stochastic_eval_is_deterministic() -> None:
    x = organized_scene(24, 24, bump=True).unsqueeze(0)
    backbone = small_backbone()
    ev = PointMAEExtractor(PointFeatureConfig(**TINY), backbone)
    tr = PointMAEExtractor(PointFeatureConfig(**TINY, backbone_train_mode=True), backbone)
    e1, e2 = ev.patch_features(x).features, ev.patch_features(x).features
    t1, t2 = tr.patch_features(x).features, tr.patch_features(x).features
    assert torch.equal(e1, e2) and not torch.allclose(t1, t2) and not torch.allclose(e1, t1)
    assert not backbone.training


def _write_official(path: Path, model: PointMAEEncoder, drop: str = "", extra: str = "") -> Path:
    """The official layout: ``{"base_model": {"module.MAE_encoder.<key>": ...}}`` plus decoder keys."""
    state = {f"module.MAE_encoder.{k}": v for k, v in model.state_dict().items() if k != drop}
    if extra:
        state[f"module.MAE_encoder.{extra}"] = torch.zeros(3)
    dim = model.norm.normalized_shape[0]
    state["module.mask_token"] = torch.zeros(1, 1, dim)
    state["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(dim)
    state["module.decoder_pos_embed.0.weight"] = torch.zeros(128, 3)
    state["module.increase_dim.0.weight"] = torch.zeros(96, dim, 1)
    torch.save({"base_model": state, "epoch": 300}, path)
    return path


def test_checkpoint_keys_match_official_names(source_model: PointMAEEncoder) -> None:
    shapes = {k: tuple(v.shape) for k, v in source_model.state_dict().items()}
    assert shapes["encoder.first_conv.0.weight"] == (128, 3, 1)
    assert shapes["encoder.second_conv.3.weight"] == (384, 512, 1)
    assert shapes["pos_embed.2.weight"] == (384, 128)
    assert shapes["blocks.blocks.11.attn.qkv.weight"] == (3 * 384, 384)
    assert shapes["blocks.blocks.0.mlp.fc1.weight"] == (4 * 384, 384)
    assert "blocks.blocks.0.attn.qkv.bias" not in shapes and "blocks.blocks.12.norm1.weight" not in shapes
    assert shapes["norm.weight"] == (384,)


def test_loaded_checkpoint_reproduces_source_outputs(tmp_path: Path, source_model: PointMAEEncoder) -> None:
    path = _write_official(
        tmp_path / "pretrain.pth", source_model, drop="encoder.first_conv.1.num_batches_tracked"
    )
    cfg = PointFeatureConfig(**{**TINY, "pretrained": True}, weights=path)
    loaded = build_point_mae(cfg)
    x = organized_scene(20, 24, border=2, bump=True).unsqueeze(0)
    want = PointMAEExtractor(cfg, source_model).patch_features(x).features
    assert torch.equal(loaded.patch_features(x).features, want)
    assert not loaded.training and not loaded.backbone.training


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        ("blocks.blocks.2.attn.proj.bias", "", "blocks.blocks.2.attn.proj.bias"),
        ("", "cls_token", "cls_token"),
    ],
)
def test_missing_or_extra_encoder_key_fails(tmp_path: Path, drop: str, extra: str, named: str) -> None:
    source = small_backbone()
    path = _write_official(tmp_path / "bad.pth", source, drop=drop, extra=extra)
    with pytest.raises(ModelFileError, match=named.replace(".", r"\.")) as err:
        load_encoder_weights(small_backbone(), path)
    assert ("missing" if drop else "unexpected") in str(err.value) and "bad.pth" in str(err.value)
    load_encoder_weights(small_backbone(), _write_official(tmp_path / "ok.pth", source))


def test_unusable_weight_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint"):
        build_point_mae(PointFeatureConfig())
    model = small_backbone()
    with pytest.raises(ModelFileError, match="not found"):
        load_encoder_weights(model, tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="readable"):
        load_encoder_weights(model, tmp_path / "junk.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="base_model"):
        load_encoder_weights(model, tmp_path / "other.pth")
    _write_official(tmp_path / "wide.pth", PointMAEEncoder(dim=64, depth=4, num_heads=4))
    with pytest.raises(ModelFileError, match="wrong shapes"):
        load_encoder_weights(model, tmp_path / "wide.pth")
