"""Hallucination fidelity: cosine similarity and relative L2 of hallucinated vs real features."""

from __future__ import annotations

import math

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
