"""Shapes, widths and invariants of the distillation networks."""

from __future__ import annotations

import pytest
import torch

from cmdiad.config import DistillConfig
from cmdiad.distill.networks import (
    DISTILLERS,
    FeatureToFeature,
    FeatureToInput,
    InputToFeature,
    build_distiller,
    decode_xyz,
    normalize_xyz,
)


def test_registry_holds_the_three_designs_in_both_architectures() -> None:
    assert DISTILLERS.names() == ["f2f", "f2i", "i2f", "reference_f2f", "reference_f2i", "reference_i2f"]
    assert DISTILLERS.get("f2i") is FeatureToInput


@pytest.mark.parametrize("in_ch,out_ch,ratio", [(6, 5, 2.5), (4, 9, 1.0)])
def test_f2f_shapes_and_hidden_width(in_ch: int, out_ch: int, ratio: float) -> None:
    net = FeatureToFeature(in_ch, out_ch, hidden_ratio=ratio)
    out = net(torch.randn(2, in_ch, 3, 7))
    assert out.shape == (2, out_ch, 3, 7)
    assert net.mlp[1].out_features == int(in_ch * ratio)
    assert out.min() >= -0.2  # final GELU bounds the output below


def test_f2f_is_patchwise_and_final_activation_flag() -> None:
    net = FeatureToFeature(5, 5, final_activation=False)
    x = torch.randn(1, 5, 4, 4)
    y = net(x)
    x2 = x.clone()
    x2[0, :, 0, 0] += torch.randn(5)  # change one patch only (not by a constant: LayerNorm)
    y2 = net(x2)
    changed = (y2 - y).abs().sum(dim=1)[0] > 1e-6
    assert changed[0, 0] and changed.sum() == 1
    assert not isinstance(net.mlp[-1], torch.nn.GELU)


@pytest.mark.parametrize("grid,size", [((3, 7), (13, 31)), ((4, 4), (30, 30)), ((2, 5), (16, 40))])
@pytest.mark.parametrize("out_ch", [3, 4])
def test_f2i_output_is_exactly_the_target_size(grid, size, out_ch: int) -> None:
    net = FeatureToInput(6, out_ch, scale=(size[0] / grid[0], size[1] / grid[1]), width=8, output_size=size)
    out = net(torch.randn(2, 6, *grid))
    assert out.shape == (2, out_ch, *size)
    assert net.generate(torch.randn(1, 6, *grid)).shape == (1, 3, *size)


def test_f2i_scale_sets_size_without_output_size_and_width_follows() -> None:
    net = FeatureToInput(5, 3, scale=4, width=12)
    assert net(torch.randn(1, 5, 3, 6)).shape == (1, 3, 12, 24)
    assert net.reduce.out_channels == 48 and net.refine[0].out_channels == 12


def test_decode_xyz_zeroes_points_with_low_validity() -> None:
    out = torch.randn(2, 4, 5, 6)
    out[:, 3] = torch.tensor([-2.0, 3.0]).repeat(15)[:30].view(5, 6)
    xyz = decode_xyz(out)
    keep = out[:, 3] >= 0
    assert torch.equal(xyz[keep.unsqueeze(1).expand_as(xyz)], out[:, :3][keep.unsqueeze(1).expand_as(xyz)])
    assert (xyz.permute(0, 2, 3, 1)[~keep] == 0).all()


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [(16, 24), (37, 50)])
def test_i2f_output_grid_and_width(stride: int, size) -> None:
    net = InputToFeature(3, 7, stride=stride, width=4, num_blocks=1)
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 7, size[0] // stride, size[1] // stride)
    assert net.head.in_channels == 32  # the trunk's output, 8 x width


def test_i2f_rejects_non_power_of_two_stride() -> None:
    with pytest.raises(ValueError, match="power of two"):
        InputToFeature(3, 7, stride=3, width=4)


def _organized_cloud(rng: torch.Generator) -> torch.Tensor:
    xyz = torch.randn(2, 3, 12, 16, generator=rng)
    xyz[:, :, :3] = 0  # background rows without points
    return xyz


def test_xyz_normalisation_makes_units_and_position_irrelevant() -> None:
    rng = torch.Generator().manual_seed(1)
    xyz = _organized_cloud(rng)
    valid = (xyz != 0).any(dim=1, keepdim=True)
    moved = (xyz * 1000.0 + torch.tensor([5.0, -7.0, 300.0]).view(1, 3, 1, 1)) * valid
    torch.testing.assert_close(normalize_xyz(moved), normalize_xyz(xyz), atol=1e-4, rtol=1e-4)
    net = InputToFeature(3, 5, stride=4, width=4, num_blocks=1, input_is_xyz=True).eval()
    torch.testing.assert_close(net(moved), net(xyz), atol=1e-4, rtol=1e-4)
    assert normalize_xyz(xyz)[:, 3].sum() == valid.sum()


def _build(kind: str, target: str = "xyz", main: str = "rgb"):
    return build_distiller(
        kind,
        main_modality=main,
        target_modality=target,
        main_channels=6,
        target_channels=5,
        main_grid=(6, 8),
        main_image_size=(24, 34),
        target_grid=(3, 4),
        target_image_size=(26, 33),
        cfg=DistillConfig(width=4, hidden_ratio=1.5, seed=7),
    )


def test_build_distiller_picks_sizes_for_each_design() -> None:
    f2f, f2i, i2f = _build("f2f"), _build("f2i"), _build("i2f", target="rgb", main="xyz")
    assert f2f(torch.randn(1, 6, 6, 8)).shape == (1, 5, 6, 8)
    assert f2i(torch.randn(1, 6, 6, 8)).shape == (1, 4, 26, 33)
    assert _build("f2i", target="rgb")(torch.randn(1, 6, 6, 8)).shape == (1, 3, 26, 33)
    assert i2f(torch.randn(1, 3, 24, 34)).shape == (1, 5, 3, 4)
    assert i2f.stride == 8 and i2f.input_is_xyz
    assert (f2i.loss, _build("f2i", target="rgb").loss, i2f.loss) == ("xyz_l2", "pixel_l2", "patch_l2")


def test_build_distiller_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = _build("f2f"), _build("f2f")
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_build_distiller_rejects_unknown_names_and_grids() -> None:
    with pytest.raises(KeyError, match="f2f"):
        _build("mlp")
    with pytest.raises(ValueError, match="modality"):
        _build("f2f", target="depth")
    with pytest.raises(ValueError, match="power-of-two"):
        build_distiller(
            "i2f",
            main_modality="rgb",
            target_modality="xyz",
            main_channels=6,
            target_channels=5,
            main_grid=(6, 8),
            main_image_size=(24, 32),
            target_grid=(5, 5),
            target_image_size=(24, 32),
            cfg=DistillConfig(width=4),
        )


def test_output_scale_calibration_matches_target_statistics() -> None:
    net = FeatureToInput(4, 4, scale=2, width=4)
    target = torch.zeros(3, 3, 6, 6)
    target[:, :, 2:] = torch.randn(3, 3, 4, 6) * 0.01 + torch.tensor([1.0, 2.0, 500.0]).view(1, 3, 1, 1)
    net.calibrate([(target, None)])
    pts = target.permute(0, 2, 3, 1)[:, 2:].reshape(-1, 3)
    torch.testing.assert_close(net.out_scale.mean[:3], pts.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.out_scale.std[:3], pts.std(0, unbiased=False), rtol=1e-3, atol=1e-5)
    assert net.out_scale.mean[3] == 0 and net.out_scale.std[3] == 1  # validity logit untouched


def test_decoder_resolution_and_trunk_fields_change_the_network() -> None:
    full = FeatureToInput(5, 3, scale=4, width=4, output_size=(22, 30))
    half = FeatureToInput(5, 3, scale=4, width=4, output_size=(22, 30), resolution=0.5)
    x = torch.randn(2, 5, 6, 8)
    assert full(x).shape == half(x).shape == (2, 3, 22, 30)
    half.load_state_dict(full.state_dict())
    assert not torch.allclose(full(x), half(x))
    kw = dict(main_modality="rgb", target_modality="xyz", main_channels=6, target_channels=5, main_grid=(4, 4),
              main_image_size=(32, 32), target_grid=(4, 4), target_image_size=(32, 32))
    small = build_distiller("i2f", cfg=DistillConfig(trunk_width=4, trunk_blocks=1), **kw)
    deep = build_distiller("i2f", cfg=DistillConfig(trunk_width=4, trunk_blocks=3), **kw)
    wide = build_distiller("i2f", cfg=DistillConfig(trunk_width=8, trunk_blocks=1), **kw)
    counts = [sum(p.numel() for p in n.parameters()) for n in (small, deep, wide)]
    assert counts[0] < counts[1] and counts[0] < counts[2]


def test_f2f_parity_switches_reference_gelu_and_calibration() -> None:
    kw = dict(main_modality="xyz", target_modality="rgb", main_channels=6, target_channels=5, main_grid=(4, 4),
              main_image_size=(32, 32), target_grid=(4, 4), target_image_size=(32, 32))
    clean = build_distiller("f2f", cfg=DistillConfig(), **kw)
    parity = build_distiller("f2f", cfg=DistillConfig(f2f_parity=True), **kw)
    assert clean.out_scale is not None and parity.out_scale is None
    assert isinstance(parity.mlp[-1], torch.nn.GELU) and not isinstance(clean.mlp[-1], torch.nn.GELU)
    targets = torch.full((3, 5, 4, 4), -7.0)
    clean.calibrate([(targets, None)])
    assert torch.allclose(clean.out_scale.mean, torch.full((5,), -7.0))
