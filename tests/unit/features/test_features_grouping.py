"""FPS, kNN, interpolation and scatter against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdiad.features import grouping
from cmdiad.features.grouping import (
    farthest_point_sample,
    interpolate_to_points,
    knn_group,
    scatter_to_grid,
)


def _brute_fps(points: np.ndarray, k: int, start: int) -> list[int]:
    chosen = [start]
    for _ in range(k - 1):
        d = np.min([[np.sum((p - points[c]) ** 2) for c in chosen] for p in points], axis=1)
        chosen.append(int(np.argmax(d)))
    return chosen


def test_fps_matches_brute_force(rng: np.random.Generator) -> None:
    pts = rng.normal(size=(2, 60, 3)) * 10 + 500  # offset: raw scanner-like coordinates
    got = farthest_point_sample(torch.tensor(pts, dtype=torch.float32), 12, start_index=5)
    assert got.shape == (2, 12) and got.dtype == torch.long
    for b in range(2):
        assert got[b].tolist() == _brute_fps(pts[b], 12, 5)


def test_fps_all_points_distinct_and_rejects_bad_k(rng: np.random.Generator) -> None:
    pts = torch.tensor(rng.normal(size=(1, 20, 3)), dtype=torch.float32)
    threads = torch.get_num_threads()
    assert sorted(farthest_point_sample(pts, 20)[0].tolist()) == list(range(20))
    assert torch.get_num_threads() == threads  # the single-threaded loop restores the setting
    with pytest.raises(ValueError, match="k must be"):
        farthest_point_sample(pts, 21)


def test_knn_equals_brute_force(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "MAX_CHUNK_ELEMENTS", 200)  # force several chunks
    pts = torch.tensor(rng.uniform(size=(2, 100, 3)) + 100, dtype=torch.float32)
    centres = pts[:, [0, 7, 50, 99, 3]]
    got = knn_group(pts, centres, 9)
    assert got.shape == (2, 5, 9)
    d = ((centres.double().unsqueeze(2) - pts.double().unsqueeze(1)) ** 2).sum(-1)
    want = d.argsort(dim=-1)[..., :9]
    assert torch.equal(got, want)
    assert torch.equal(got[..., 0], torch.tensor([[0, 7, 50, 99, 3]] * 2))


def test_interpolation_weights_sum_to_one_and_hit_centres(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grouping, "MAX_CHUNK_ELEMENTS", 64)
    pts = torch.tensor(rng.uniform(size=(2, 80, 3)) * 50 + 300, dtype=torch.float32)
    idx = torch.tensor([[1, 9, 20, 33, 70, 79]] * 2)
    centres = torch.gather(pts, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    feats = torch.randn(2, 4, 6)
    out = interpolate_to_points(pts, centres, feats)
    assert out.shape == (2, 4, 80)
    torch.testing.assert_close(out[:, :, idx[0]], feats)
    ones = interpolate_to_points(pts, centres, torch.ones(2, 1, 6))
    torch.testing.assert_close(ones, torch.ones(2, 1, 80))


def test_interpolation_matches_reference_formula(rng: np.random.Generator) -> None:
    pts = rng.uniform(size=(1, 30, 3))
    centres = rng.uniform(size=(1, 5, 3))
    feats = rng.normal(size=(1, 2, 5))
    d2 = ((pts[0, :, None] - centres[0, None]) ** 2).sum(-1)
    near = np.argsort(d2, axis=1)[:, :3]
    w = 1 / (np.take_along_axis(d2, near, 1) + 1e-8)
    w /= w.sum(1, keepdims=True)
    want = (feats[0][:, near] * w[None]).sum(-1)
    t = [torch.tensor(a, dtype=torch.float32) for a in (pts, centres, feats)]
    got = interpolate_to_points(*t, k_nearest=3)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-4, atol=1e-5)


def test_interpolation_with_fewer_centres_than_neighbours() -> None:
    pts = torch.rand(1, 10, 3)
    out = interpolate_to_points(pts, pts[:, :2], torch.tensor([[[1.0, 1.0]]]))
    torch.testing.assert_close(out, torch.ones(1, 1, 10))


def test_scatter_to_grid_places_rows_and_zeros_background() -> None:
    feats = torch.arange(6.0).view(2, 3)
    out = scatter_to_grid(feats, torch.tensor([0, 5, 7]), (2, 4))
    want = torch.zeros(2, 8)
    want[:, [0, 5, 7]] = feats
    assert torch.equal(out, want.view(2, 2, 4))
