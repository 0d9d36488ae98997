"""Coreset samplers: subset, size, determinism, covering radius (PatchCore invariants)."""

from __future__ import annotations

import math

import pytest
import torch

from cmdiad.config import CoresetConfig
from cmdiad.memory.coreset import (
    SAMPLERS,
    approximate_greedy_coreset_indices,
    build_sampler,
    coreset_size,
    covering_radius,
    greedy_coreset_indices,
    johnson_lindenstrauss_dim,
    random_projection,
)


def _points(n: int = 400, d: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_jl_dim_matches_sklearn_formula() -> None:
    # floor(4 ln n / (eps^2/2 - eps^3/3)) at eps = 0.9: denominator 0.162
    assert johnson_lindenstrauss_dim(100_000, 0.9) == int(4 * math.log(100_000) / 0.162)
    assert johnson_lindenstrauss_dim(700_000, 0.9) in range(330, 346)


def test_coreset_size_is_ceil() -> None:
    assert coreset_size(0.1, 30) == 3
    assert coreset_size(0.1, 31) == 4
    assert coreset_size(0.001, 10) == 1
    assert coreset_size(1.0, 7) == 7


def test_random_projection_is_seeded_and_shaped() -> None:
    x = _points(50, 64)
    a, b = random_projection(x, 16, seed=3), random_projection(x, 16, seed=3)
    assert a.shape == (50, 16) and a.is_contiguous()
    assert torch.equal(a, b)
    assert not torch.equal(a, random_projection(x, 16, seed=4))


@pytest.mark.parametrize("name", ["greedy", "greedy_reference", "approximate_greedy", "random", "identity"])
def test_sampler_subset_size_determinism(name: str) -> None:
    x = _points()
    ratio = 1.0 if name == "identity" else 0.13
    idx = SAMPLERS.get(name)(ratio, seed=1).select(x)
    assert idx.dtype == torch.long and idx.device == x.device
    assert len(idx) == math.ceil(ratio * len(x))
    assert len(set(idx.tolist())) == len(idx)  # a subset, no repeats
    assert int(idx.min()) >= 0 and int(idx.max()) < len(x)
    assert torch.equal(idx, SAMPLERS.get(name)(ratio, seed=1).select(x))


def test_sampler_run_returns_rows() -> None:
    x = _points()
    sampler = SAMPLERS.get("greedy")(0.1)
    assert torch.equal(sampler.run(x), x[sampler.select(x)])


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_sampler_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        SAMPLERS.get("greedy")(ratio)


def test_greedy_covering_radius_never_increases() -> None:
    x = _points(300, 8)
    idx = greedy_coreset_indices(x, 60)
    radii = [covering_radius(x, idx[:k]) for k in range(1, 61, 3)]
    assert all(b <= a + 1e-6 for a, b in zip(radii, radii[1:], strict=False))
    assert covering_radius(x, torch.arange(len(x))) == 0.0


def test_greedy_matches_brute_force_k_centre() -> None:
    x = _points(120, 6)
    idx = greedy_coreset_indices(x, 15, start_index=5).tolist()
    chosen = [5]
    dist = torch.cdist(x, x)
    for _ in range(14):
        chosen.append(int(dist[:, chosen].min(dim=1).values.argmax()))
    assert idx == chosen


def test_greedy_beats_random_covering() -> None:
    x = _points(500, 4)
    greedy = covering_radius(x, greedy_coreset_indices(x, 50))
    rand = covering_radius(x, SAMPLERS.get("random")(0.1, seed=0).select(x))
    assert greedy < rand


def test_projection_changes_only_the_search_space() -> None:
    x = _points(200, 96)
    a = greedy_coreset_indices(x, 20, projection_dim=32, seed=0)
    b = greedy_coreset_indices(x, 20, projection_dim=32, seed=1)
    assert len(a) == len(b) == 20 and not torch.equal(a, b)


def test_duplicates_are_never_selected_twice() -> None:
    x = torch.zeros(10, 3)
    x[:3] = torch.eye(3)
    idx = greedy_coreset_indices(x, 10)
    assert sorted(idx.tolist()) == list(range(10))


def test_approximate_greedy_is_seeded() -> None:
    x = _points(300, 16)
    a = approximate_greedy_coreset_indices(x, 30, seed=2, projection_dim=8)
    assert torch.equal(a, approximate_greedy_coreset_indices(x, 30, seed=2, projection_dim=8))


def test_build_sampler_from_config() -> None:
    sampler = build_sampler(CoresetConfig(ratio=0.25, sampler="random", seed=5))
    assert len(sampler.select(_points(40))) == 10 and sampler.seed == 5
