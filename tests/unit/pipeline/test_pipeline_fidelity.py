"""Hallucination fidelity: cosine similarity and relative L2 of hallucinated vs real features."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cmdiad.pipeline.mtfi import fidelity
from cmdiad.types import PatchFeatures


def _pf(x: torch.Tensor, valid: torch.Tensor | None = None) -> PatchFeatures:
    return PatchFeatures(x, torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool) if valid is None else valid)


def test_identical_features_are_perfect_and_opposite_ones_are_not() -> None:
    x = torch.randn(2, 5, 4, 4)
    same = fidelity(_pf(x), _pf(x))
    assert math.isclose(same["cosine"], 1.0, abs_tol=1e-9) and same["rel_l2"] < 1e-9 and same["patches"] == 32
    opposite = fidelity(_pf(-x), _pf(x))
    assert math.isclose(opposite["cosine"], -1.0, abs_tol=1e-9) and math.isclose(opposite["rel_l2"], 2.0, rel_tol=1e-9)


def test_only_patches_valid_in_both_count_and_grids_are_aligned() -> None:
    real = torch.randn(1, 3, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0] = False
    hallucinated = real.clone()
    hallucinated[0, :, 0] = 100.0  # wrong only where the real patches are invalid
    assert fidelity(_pf(hallucinated), _pf(real, valid))["rel_l2"] < 1e-9
    fine = torch.nn.functional.interpolate(real, size=(8, 8), mode="nearest")
    out = fidelity(_pf(fine), _pf(real))  # the real features are resampled to the hallucinated grid
    assert out["patches"] == 64 and out["rel_l2"] < 1e-9


def test_nothing_to_compare_gives_nan() -> None:
    x = torch.randn(1, 2, 2, 2)
    out = fidelity(_pf(x), _pf(x, torch.zeros(1, 2, 2, dtype=torch.bool)))
    assert out["patches"] == 0 and math.isnan(out["cosine"])


def test_r2_is_one_when_exact_zero_for_the_mean_patch_and_negative_for_noise() -> None:
    real = torch.randn(3, 4, 5, 5) + 2.0
    assert math.isclose(fidelity(_pf(real), _pf(real))["r2"], 1.0, abs_tol=1e-12)
    mean_patch = real.mean(dim=(0, 2, 3), keepdim=True).expand_as(real)
    assert math.isclose(fidelity(_pf(mean_patch), _pf(real))["r2"], 0.0, abs_tol=1e-9)
    noise = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1)) + 2.0
    assert fidelity(_pf(noise), _pf(real))["r2"] < -0.5  # as spread as the real features, unrelated
    halfway = 0.5 * (real + mean_patch)
    assert math.isclose(fidelity(_pf(halfway), _pf(real))["r2"], 0.75, abs_tol=1e-6)


def test_the_pixel_offset_is_earned_by_a_hallucination_that_explains_the_real_features() -> None:
    from cmdiad.config import FusionConfig
    from cmdiad.pipeline.mtfi import earned_fusion_config

    cfg = FusionConfig(kind="gated", pixel_offset=0.5)
    assert earned_fusion_config(cfg, {"r2": 0.3, "cosine": 0.8}) is cfg
    for fid in ({"r2": -0.2}, {"r2": 0.0}, {"r2": float("nan")}, None):  # worse than the mean, or unmeasured
        assert earned_fusion_config(cfg, fid) == FusionConfig(kind="gated", pixel_offset=0.0)


def test_a_hallucination_no_closer_than_another_good_part_is_left_out_of_the_pixels() -> None:
    from cmdiad.config import FusionConfig
    from cmdiad.pipeline.mtfi import earned_fusion_config

    cfg = FusionConfig(kind="gated", pixel_offset=0.5)
    left_out = FusionConfig(kind="gated", pixel_offset=0.0, pixel_combine="real")
    for r2 in (-1.0, -1.04, -5.0):
        assert earned_fusion_config(cfg, {"r2": r2}) == left_out
    assert earned_fusion_config(cfg, {"r2": -0.99}) == FusionConfig(kind="gated", pixel_offset=0.0)
    lower = FusionConfig(kind="gated", fidelity_floor=-1e9)  # the floor switched off: in the maximum, no offset
    assert earned_fusion_config(lower, {"r2": -5.0}) == replace(lower, pixel_offset=0.0)


def test_the_r2_bands_separate_unrelated_hallucinations_from_informative_ones() -> None:
    """An unrelated hallucination h has r2 = -E|h - mean|^2 / Var: at most 0 however it is scaled,
    -1 when it is another good part's features (the floor), and only a related one gets above 0."""
    g = torch.Generator().manual_seed(3)
    real = torch.randn(40, 6, 5, 5, generator=g) * torch.linspace(0.5, 2.0, 6)[None, :, None, None] + 1.0
    other = real[torch.randperm(40, generator=g)]  # another good part's features, patch for patch
    assert math.isclose(fidelity(_pf(other), _pf(real))["r2"], -1.0, abs_tol=0.15)
    mean = real.mean(dim=(0, 2, 3), keepdim=True)
    for shrink in (0.1, 0.5, 0.9):  # unrelated, and closer to the mean patch than real features are
        r2 = fidelity(_pf(mean + shrink * (other - mean)), _pf(real))["r2"]
        assert -1.0 < r2 <= 0.05 and math.isclose(r2, -shrink**2, abs_tol=0.15)
    related = real + 0.5 * (other - mean)
    assert fidelity(_pf(related), _pf(real))["r2"] > 0.5


def test_r2_se_is_the_jackknife_over_samples_of_r2() -> None:
    """Each sample left out in turn, r2 measured again on the rest (its mean patch too)."""
    g = torch.Generator().manual_seed(5)
    real = torch.randn(5, 3, 4, 4, generator=g) + 1.0
    hallucinated = real + torch.randn(5, 3, 4, 4, generator=g) * torch.linspace(0.2, 1.5, 5)[:, None, None, None]
    valid = torch.rand(5, 4, 4, generator=g) > 0.2
    out = fidelity(_pf(hallucinated), _pf(real, valid))
    keep = [i for i in range(5) if valid[i].any()]
    loo = [fidelity(_pf(hallucinated[[j for j in keep if j != i]]), _pf(real[[j for j in keep if j != i]],
                                                                          valid[[j for j in keep if j != i]]))["r2"]
           for i in keep]
    m = len(loo)
    mean = sum(loo) / m
    assert math.isclose(out["r2_se"], math.sqrt((m - 1) / m * sum((x - mean) ** 2 for x in loo)), rel_tol=1e-9)
    assert out["r2_se"] > 0
    assert math.isnan(fidelity(_pf(hallucinated[:1]), _pf(real[:1]))["r2_se"])  # one sample: no scatter


def test_a_map_within_its_scatter_of_the_floor_stays_in_the_maximum() -> None:
    from cmdiad.config import FusionConfig
    from cmdiad.pipeline.mtfi import earned_fusion_config

    cfg = FusionConfig(kind="gated", pixel_offset=0.5)
    kept = FusionConfig(kind="gated", pixel_offset=0.0)
    left_out = FusionConfig(kind="gated", pixel_offset=0.0, pixel_combine="real")
    assert earned_fusion_config(cfg, {"r2": -1.04, "r2_se": 0.04}) == kept  # -1.04 + 2 * 0.04 > -1
    assert earned_fusion_config(cfg, {"r2": -1.5, "r2_se": 0.12}) == left_out
    assert earned_fusion_config(cfg, {"r2": -1.04, "r2_se": float("nan")}) == left_out  # no scatter measured
    strict = FusionConfig(kind="gated", pixel_offset=0.5, fidelity_floor_se=0.0)
    assert earned_fusion_config(strict, {"r2": -1.04, "r2_se": 0.04}).pixel_combine == "real"


def test_a_pixel_weight_by_fidelity_is_the_share_of_variance_the_hallucination_explains() -> None:
    from cmdiad.config import FusionConfig
    from cmdiad.pipeline.mtfi import earned_fusion_config

    cfg = FusionConfig(kind="gated", pixel_combine="gated", pixel_offset=0.0, pixel_weight_by_fidelity=True)
    assert earned_fusion_config(cfg, {"r2": 0.3}).pixel_weight == pytest.approx(0.3)
    assert earned_fusion_config(replace(cfg, pixel_weight=0.5), {"r2": 1.4}).pixel_weight == pytest.approx(0.5)
    for r2 in (0.0, -0.5):  # explains nothing: left out, as below the floor
        assert earned_fusion_config(cfg, {"r2": r2}).pixel_combine == "real"
    assert earned_fusion_config(cfg, None).pixel_weight == 1.0  # unmeasured: as set
    assert earned_fusion_config(replace(cfg, pixel_weight_by_fidelity=False), {"r2": 0.3}).pixel_weight == 1.0
