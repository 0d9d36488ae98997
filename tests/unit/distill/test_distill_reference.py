"""The reference code's networks: grid policy, sizes, and strict loading of its checkpoint layout.

The checkpoints here are written in the reference's key layout, spelled out from its module and
attribute names (``HallucinationCrossModalityNetwork``, ``HallucinationFeatureToInputConv``,
``HRNet``), not produced by cmdiad's own mapping, and saved the way its training script does
(``{"model": state_dict, "epoch": ..., "args": Namespace}``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from cmdiad.config import DistillConfig, from_dict
from cmdiad.distill.networks import (
    FeatureToFeature,
    InputToFeature,
    build_distiller,
    feature_grid,
)
from cmdiad.distill.reference import (
    ReferenceFeatureToFeature,
    ReferenceFeatureToInput,
    ReferenceInputToFeature,
    load_reference_checkpoint,
    reference_checkpoint_path,
)
from cmdiad.distill.train import fit_distiller, load_distiller, save_distiller
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.pipeline.mtfi import PairedData, design
from cmdiad.types import PatchFeatures

MAIN, TARGET = (56, 56), (28, 28)  # Point-MAE at stride 4 and DINO at stride 8, 224 input


def _build(kind: str, main: str, *, architecture: str = "reference", grid: str = "finer", size: int = 224):
    other = "rgb" if main == "xyz" else "xyz"
    grids = {"xyz": (size // 4, size // 4), "rgb": (size // 8, size // 8)}
    cfg = DistillConfig(architecture=architecture, grid=grid, width=6, trunk_width=4, trunk_blocks=2, seed=3)
    return build_distiller(kind, main_modality=main, target_modality=other, main_channels=6, target_channels=5,
                           main_grid=grids[main], main_image_size=(size, size), target_grid=grids[other],
                           target_image_size=(size, size), cfg=cfg)


# ---------------------------------------------------------------- grids and sizes


def test_feature_grid_policies() -> None:
    assert feature_grid("f2f", TARGET, MAIN, "main") == TARGET  # f2f_rgb: xyz target pooled to 28
    assert feature_grid("i2f", MAIN, TARGET, "main") == TARGET  # i2f_xyz predicts the rgb grid
    for kind in ("f2f", "f2i", "i2f"):
        assert feature_grid(kind, TARGET, MAIN, "finer") == MAIN
        assert feature_grid(kind, MAIN, TARGET, "finer") == MAIN
    with pytest.raises(ValueError, match="grid policy"):
        feature_grid("f2f", MAIN, TARGET, "coarse")
    with pytest.raises(ConfigError, match="grid"):
        from_dict(DistillConfig, {"grid": "coarse"})
    with pytest.raises(ConfigError, match="architecture"):
        from_dict(DistillConfig, {"architecture": "hrnet"})


def test_designs_resample_their_training_data_onto_the_feature_grid() -> None:
    rgb = PatchFeatures(torch.randn(2, 4, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool))
    valid = torch.ones(2, 6, 6, dtype=torch.bool)
    valid[:, :2] = False
    xyz = PatchFeatures(torch.randn(2, 5, 6, 6) * valid.unsqueeze(1), valid)

    def data(main, target, inputs=None):
        return PairedData(main, inputs, target, inputs)

    f2f = design("f2f")
    grid = feature_grid("f2f", rgb.grid, xyz.grid, "finer")  # f2f_rgb, reference grid
    x, y, mask = f2f.training_data(data(rgb, xyz), grid)
    assert grid == (6, 6) and y is xyz.features and torch.equal(mask, xyz.valid)
    torch.testing.assert_close(x, rgb.features.repeat_interleave(2, 2).repeat_interleave(2, 3))
    grid = feature_grid("f2f", rgb.grid, xyz.grid, "main")  # cmdiad: xyz pooled over valid patches
    x, y, mask = f2f.training_data(data(rgb, xyz), grid)
    assert x is rgb.features and y.shape[2:] == (3, 3) and not mask[:, 0].any() and mask[:, 1:].all()
    torch.testing.assert_close(y[:, :, 1, 1], xyz.features[:, :, 2:4, 2:4].mean(dim=(2, 3)))
    inputs = torch.randn(2, 3, 24, 24)
    grid = feature_grid("i2f", xyz.grid, rgb.grid, "finer")  # i2f_xyz: rgb target repeated to 6x6
    x, y, _ = design("i2f").training_data(data(xyz, rgb, inputs), grid)
    assert x is inputs and y.shape[2:] == (6, 6)
    grid = feature_grid("f2i", rgb.grid, xyz.grid, "finer")  # f2i_rgb: decoder input 6x6
    x, y, _ = design("f2i").training_data(data(rgb, xyz, inputs), grid)
    assert x.shape[2:] == (6, 6) and y is inputs


def test_reference_i2f_xyz_predicts_56x56_with_stride_4_on_the_finer_grid() -> None:
    net = _build("i2f", "xyz").eval()
    assert isinstance(net, ReferenceInputToFeature) and net.stride == 4
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 5, 56, 56)
    assert net.conv1.stride == (2, 2) and net.conv2.stride == (2, 2) and len(net.extra_stem) == 0
    # cmdiad's grid keeps the rgb grid: one extra stride-2 convolution, 28x28.
    main = _build("i2f", "xyz", grid="main").eval()
    assert main.stride == 8 and main(torch.randn(1, 3, 224, 224)).shape == (1, 5, 28, 28)
    assert isinstance(_build("i2f", "xyz", architecture="cmdiad"), InputToFeature)


def test_reference_f2i_rgb_decodes_the_repeated_56x56_grid_to_three_channels() -> None:
    net = _build("f2i", "rgb").eval()
    assert isinstance(net, ReferenceFeatureToInput) and net.loss == "pixel_l2"
    out = net(torch.randn(2, 6, 56, 56))
    assert out.shape == (2, 3, 224, 224)  # no validity channel, even for an xyz target
    assert torch.equal(net.generate(torch.zeros(1, 6, 56, 56)), net(torch.zeros(1, 6, 56, 56)))
    assert (net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels) == (24, 6, 2)


def test_fit_uses_the_networks_own_loss_and_rejects_another() -> None:
    net = _build("f2i", "rgb", size=16)
    x, y = torch.randn(4, 6, 4, 4), torch.randn(4, 3, 16, 16)
    cfg = DistillConfig(epochs=1, batch_size=2, warmup_epochs=0, val_fraction=0.0)
    assert fit_distiller(net, x, y, cfg=cfg, device="cpu").train_loss[0] > 0
    with pytest.raises(ValueError, match="trains with loss 'pixel_l2', not 'xyz_l2'"):
        fit_distiller(net, x, y, loss="xyz_l2", cfg=cfg, device="cpu")


def test_reference_f2f_is_the_parity_mlp_and_records_its_direction() -> None:
    net = _build("f2f", "rgb", size=32)
    assert isinstance(net, ReferenceFeatureToFeature) and isinstance(net, FeatureToFeature)
    assert net.out_scale is None and isinstance(net.mlp[-1], torch.nn.GELU)
    assert net.init_kwargs["main_modality"] == "rgb"


@pytest.mark.parametrize("kind", ["f2f", "f2i", "i2f"])
def test_reference_networks_round_trip_through_save_and_load(tmp_path: Path, kind: str) -> None:
    net = _build(kind, "xyz", size=32).eval()
    save_distiller(net, tmp_path)
    loaded = load_distiller(tmp_path)
    assert type(loaded) is type(net) and loaded.architecture == "reference"
    x = torch.randn(1, 3, 32, 32) if kind == "i2f" else torch.randn(1, 6, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))


# ---------------------------------------------------------------- the reference key layout


def _f2f_file_state(xyz_dim: int, rgb_dim: int, ratio: float = 2.5) -> dict[str, torch.Tensor]:
    """``HallucinationCrossModalityNetwork``: ``xyz_mlp`` maps xyz -> rgb, ``rgb_mlp`` rgb -> xyz."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for main, d_in, d_out in (("xyz", xyz_dim, rgb_dim), ("rgb", rgb_dim, xyz_dim)):
        h = int(d_in * ratio)
        state[f"{main}_norm.weight"] = 1 + 0.1 * torch.randn(d_in, generator=g)
        state[f"{main}_norm.bias"] = 0.1 * torch.randn(d_in, generator=g)
        for name, shape in (("fc1", (h, d_in)), ("fc2", (h, h)), ("fc3", (d_out, h))):
            state[f"{main}_mlp.mlp_module.0.{name}.weight"] = 0.3 * torch.randn(*shape, generator=g)
            state[f"{main}_mlp.mlp_module.0.{name}.bias"] = 0.1 * torch.randn(shape[0], generator=g)
    return state


def _f2i_file_state(dim: int, widths=(24, 6, 2)) -> dict[str, torch.Tensor]:
    """``HallucinationFeatureToInputConv``: ``norm`` (never applied) and ``conv1..conv4``."""
    g = torch.Generator().manual_seed(1)
    state = {"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}
    chans = (dim, *widths, 3)
    for i in range(4):
        state[f"conv{i + 1}.weight"] = 0.2 * torch.randn(chans[i + 1], chans[i], 3, 3, generator=g)
        state[f"conv{i + 1}.bias"] = 0.1 * torch.randn(chans[i + 1], generator=g)
    return state


def _bn(prefix: str, c: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g),
        f"{prefix}.bias": 0.1 * torch.randn(c, generator=g),
        f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
        f"{prefix}.running_var": 1 + torch.rand(c, generator=g),
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _i2f_file_state(width: int, out: int, blocks_per_layer: int = 2) -> dict[str, torch.Tensor]:
    """``HRNet``: stem ``conv1/bn1/conv2/bn2``, ``layer1..layer4`` bottlenecks, ``final_layer``."""
    g = torch.Generator().manual_seed(2)
    state = {"conv1.weight": 0.2 * torch.randn(width, 3, 3, 3, generator=g), **_bn("bn1", width, g),
             "conv2.weight": 0.1 * torch.randn(2 * width, width, 3, 3, generator=g), **_bn("bn2", 2 * width, g)}
    planes, out_w = 2 * width, 8 * width
    for layer in range(1, 5):
        for j in range(blocks_per_layer):
            p = f"layer{layer}.{j}"
            cin = planes if (layer, j) == (1, 0) else out_w
            state[f"{p}.conv1.weight"] = 0.1 * torch.randn(planes, cin, 1, 1, generator=g)
            state[f"{p}.conv2.weight"] = 0.1 * torch.randn(planes, planes, 3, 3, generator=g)
            state[f"{p}.conv3.weight"] = 0.1 * torch.randn(out_w, planes, 1, 1, generator=g)
            for k, c in (("bn1", planes), ("bn2", planes), ("bn3", out_w)):
                state.update(_bn(f"{p}.{k}", c, g))
    state["layer1.0.downsample.0.weight"] = 0.1 * torch.randn(out_w, planes, 1, 1, generator=g)
    state.update(_bn("layer1.0.downsample.1", out_w, g))
    state["final_layer.weight"] = 0.1 * torch.randn(out, out_w, 1, 1, generator=g)
    state["final_layer.bias"] = 0.1 * torch.randn(out, generator=g)
    return state


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    args = argparse.Namespace(lr=5e-4, batch_size=32, train_method="HallucinationCrossModality", c_hrnet=48)
    torch.save({"model": state, "epoch": 99, "args": args}, path)
    return path


@pytest.mark.parametrize("main", ["xyz", "rgb"])
def test_f2f_checkpoint_loads_the_main_direction_and_matches_the_reference_forward(tmp_path, main: str) -> None:
    state = _f2f_file_state(xyz_dim=6, rgb_dim=5)
    dims = {"xyz": 6, "rgb": 5}
    other = "rgb" if main == "xyz" else "xyz"
    net = ReferenceFeatureToFeature(dims[main], dims[other], main).eval()
    load_reference_checkpoint(net, _save(tmp_path / "MTFI_FtoF.pth", state))
    x = torch.randn(2, dims[main], 3, 4)
    rows = x.permute(0, 2, 3, 1)
    y = F.layer_norm(rows, (dims[main],), state[f"{main}_norm.weight"], state[f"{main}_norm.bias"])
    for fc in ("fc1", "fc2", "fc3"):
        key = f"{main}_mlp.mlp_module.0.{fc}"
        y = F.gelu(F.linear(y, state[f"{key}.weight"], state[f"{key}.bias"]))
    torch.testing.assert_close(net(x), y.permute(0, 3, 1, 2))


def test_f2i_checkpoint_loads_and_matches_the_reference_forward(tmp_path) -> None:
    state = _f2i_file_state(dim=6)
    net = ReferenceFeatureToInput(6, (16, 20), width=6).eval()
    load_reference_checkpoint(net, _save(tmp_path / "f2i.pth", state))
    x = torch.randn(1, 6, 4, 5)
    y = F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1)
    y = F.interpolate(y, size=(16, 20), mode="bicubic")
    for i in (2, 3):
        y = F.relu(F.conv2d(y, state[f"conv{i}.weight"], state[f"conv{i}.bias"], padding=1))
    y = F.conv2d(y, state["conv4.weight"], state["conv4.bias"], padding=1)
    torch.testing.assert_close(net(x), y)


def test_i2f_checkpoint_loads_strictly_and_skips_the_unrun_fourth_stage(tmp_path) -> None:
    state = _i2f_file_state(width=4, out=5)
    net = ReferenceInputToFeature(3, 5, stride=4, width=4, num_blocks=6, blocks_per_layer=2).eval()
    load_reference_checkpoint(net, _save(tmp_path / "i2f.pth", state))
    assert torch.equal(net.layer3[1].bn3.running_var, state["layer3.1.bn3.running_var"])
    assert torch.equal(net.final_layer.weight, state["final_layer.weight"])
    assert not hasattr(net, "layer4")
    x = torch.randn(1, 3, 32, 32)
    y = F.relu(F.batch_norm(F.conv2d(x, state["conv1.weight"], stride=2, padding=1), state["bn1.running_mean"],
                            state["bn1.running_var"], state["bn1.weight"], state["bn1.bias"]))
    torch.testing.assert_close(F.relu(net.bn1(net.conv1(x))), y)
    assert net(x).shape == (1, 5, 8, 8)


def test_bare_state_dicts_with_module_prefix_load_too(tmp_path) -> None:
    state = {f"module.{k}": v for k, v in _f2i_file_state(dim=6).items()}
    torch.save(state, tmp_path / "bare.pth")
    net = ReferenceFeatureToInput(6, (8, 8), width=6)
    load_reference_checkpoint(net, tmp_path / "bare.pth")
    assert torch.equal(net.conv4.bias, state["module.conv4.bias"])


def test_layout_errors_name_missing_unexpected_and_misshaped_keys(tmp_path) -> None:
    state = _i2f_file_state(width=4, out=5)
    del state["layer2.0.bn2.running_mean"]
    state["transition1.0.weight"] = torch.zeros(3)
    state["final_layer.weight"] = torch.zeros(5, 7, 1, 1)  # the README's c_hrnet head
    net = ReferenceInputToFeature(3, 5, stride=4, width=4, num_blocks=6, blocks_per_layer=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ModelFileError) as info:
        load_reference_checkpoint(net, _save(tmp_path / "bad.pth", state))
    msg = str(info.value)
    assert "bad.pth" in msg and "missing keys: layer2.0.bn2.running_mean" in msg
    assert "unexpected keys: transition1.0.weight" in msg and "wrong shapes: final_layer.weight (5, 7, 1, 1)" in msg
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded


def test_wrong_direction_or_design_and_unusable_files_fail_clearly(tmp_path) -> None:
    f2f = _save(tmp_path / "f2f.pth", _f2f_file_state(6, 5))
    with pytest.raises(ModelFileError, match="wrong shapes"):
        load_reference_checkpoint(ReferenceFeatureToFeature(5, 6, "xyz"), f2f)  # dims of the rgb half
    with pytest.raises(ModelFileError, match="missing keys: conv1.bias, conv1.weight"):
        load_reference_checkpoint(ReferenceFeatureToInput(6, (8, 8), width=6), f2f)
    with pytest.raises(ConfigError, match="architecture = 'reference'"):
        load_reference_checkpoint(FeatureToFeature(6, 5), f2f)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pth"):
        load_reference_checkpoint(ReferenceFeatureToInput(6, (8, 8)), tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ModelFileError, match="no state dict"):
        load_reference_checkpoint(ReferenceFeatureToInput(6, (8, 8)), tmp_path / "empty.pth")
    with pytest.raises(ModelFileError, match="not found"):
        load_reference_checkpoint(ReferenceFeatureToInput(6, (8, 8)), tmp_path / "absent.pth")


def test_checkpoint_folder_resolves_the_released_file_names(tmp_path) -> None:
    for name in ("MTFI_FtoF_PCs.pth", "MTFI_ItoF_RGB.pth"):
        (tmp_path / name).write_bytes(b"")
    assert reference_checkpoint_path(tmp_path, "f2f", "xyz") == tmp_path / "MTFI_FtoF_PCs.pth"
    assert reference_checkpoint_path(tmp_path, "i2f", "rgb") == tmp_path / "MTFI_ItoF_RGB.pth"
    assert reference_checkpoint_path(tmp_path / "MTFI_FtoF_PCs.pth", "i2f", "xyz").name == "MTFI_FtoF_PCs.pth"
    with pytest.raises(ModelFileError, match="MTFI_FtoI_PCs.pth"):
        reference_checkpoint_path(tmp_path, "f2i", "xyz")
    cfg = from_dict(DistillConfig, {"checkpoint": str(tmp_path)})
    assert cfg.checkpoint == tmp_path
