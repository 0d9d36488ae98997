"""Pruned greedy k-centre: the same picks as the torch reference loop, exact covering radii."""

from __future__ import annotations

import logging

import pytest
import torch

from cmdiad.memory import kcentre
from cmdiad.memory.coreset import (
    SAMPLERS,
    _greedy_loop,
    approximate_greedy_coreset_indices,
    greedy_coreset_indices,
)

pytestmark = pytest.mark.skipif(not kcentre.available(), reason="numba is not importable")


def _points(n: int, d: int, seed: int, duplicates: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=gen) * 4.0
    x = centres[torch.randint(8, (n,), generator=gen)] + torch.randn(n, d, generator=gen)
    if duplicates:
        src = torch.randperm(n, generator=gen)[:duplicates]
        dst = torch.randperm(n, generator=gen)[:duplicates]
        x[dst] = x[src]
    return x


def _brute_radius(x: torch.Tensor, picks: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), x[picks].double()).min(dim=1).values.max())


@pytest.mark.parametrize(
    ("n", "d", "k", "duplicates", "seed"),
    [(40, 2, 40, 0, 0), (300, 5, 30, 0, 1), (1000, 16, 150, 100, 2), (2500, 32, 250, 400, 3), (600, 3, 600, 200, 4)],
)
def test_pruned_picks_equal_reference_picks(n: int, d: int, k: int, duplicates: int, seed: int) -> None:
    x = _points(n, d, seed, duplicates)
    fast = greedy_coreset_indices(x, k, seed=seed)
    ref = greedy_coreset_indices(x, k, seed=seed, reference=True)
    assert torch.equal(fast, ref)
    assert len(set(fast.tolist())) == k


@pytest.mark.parametrize("num_clusters", [1, 7, 64, 500])
def test_picks_do_not_depend_on_the_clustering(num_clusters: int) -> None:
    x = _points(500, 6, seed=5, duplicates=50)
    ref = greedy_coreset_indices(x, 80, reference=True, start_index=17)
    for seed in (0, 1):
        idx, _ = kcentre.ClusteredRows(x, num_clusters=num_clusters, seed=seed).run(80, start_index=17)
        assert torch.equal(idx, ref)


def test_radii_are_the_covering_radii_and_never_increase() -> None:
    x = _points(400, 4, seed=6)
    idx, radius = kcentre.ClusteredRows(x, num_clusters=20).run(60)
    assert all(b <= a for a, b in zip(radius.tolist(), radius.tolist()[1:], strict=False))
    for i in (0, 9, 59):
        assert radius[i].item() == pytest.approx(_brute_radius(x, idx[: i + 1]), rel=1e-5)


def test_forced_picks_give_their_covering_radius() -> None:
    x = _points(400, 4, seed=7)
    picks = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:40]
    idx, radius = kcentre.ClusteredRows(x, num_clusters=30).run(40, forced=picks)
    assert torch.equal(idx, picks)
    assert radius[-1].item() == pytest.approx(_brute_radius(x, picks), rel=1e-5)
    _, greedy_radius = kcentre.ClusteredRows(x, num_clusters=30).run(40)
    assert greedy_radius[-1] < radius[-1]  # greedy k-centre covers better than random picks


def test_all_rows_picked_gives_radius_zero() -> None:
    x = _points(50, 3, seed=8, duplicates=10)
    idx, radius = kcentre.ClusteredRows(x, num_clusters=5).run(50)
    assert sorted(idx.tolist()) == list(range(50))
    assert radius[-1].item() == 0.0


def test_initial_min_distances_match_the_reference_loop() -> None:
    x = _points(800, 8, seed=9)
    init = torch.rand(800, generator=torch.Generator().manual_seed(1)) * 50.0
    first = int(torch.argmax(init))
    ref = _greedy_loop(x, init.clone(), torch.tensor(first), 90)
    idx, _ = kcentre.ClusteredRows(x, num_clusters=40).run(90, start_index=first, min_d2=init)
    assert torch.equal(idx, ref)


def test_projected_sampler_matches_reference_sampler() -> None:
    x = _points(1200, 96, seed=10, duplicates=30)
    fast = SAMPLERS.get("greedy")(0.05, seed=3, eps=0.9).select(x)
    ref = SAMPLERS.get("greedy_reference")(0.05, seed=3, eps=0.9).select(x)
    assert torch.equal(fast, ref)
    assert torch.equal(fast, SAMPLERS.get("greedy")(0.05, seed=3, eps=0.9).select(x))  # deterministic


def test_without_numba_falls_back_to_the_matvec_loop(monkeypatch, caplog) -> None:
    x = _points(300, 5, seed=11)
    fast = greedy_coreset_indices(x, 30)
    approx = approximate_greedy_coreset_indices(x, 30, projection_dim=None)
    monkeypatch.setattr(kcentre, "numba", None)
    with caplog.at_level(logging.WARNING, logger="cmdiad.memory.coreset"):
        assert torch.equal(greedy_coreset_indices(x, 30), fast)
        assert torch.equal(approximate_greedy_coreset_indices(x, 30, projection_dim=None), approx)
    assert "numba" in caplog.text
    with pytest.raises(RuntimeError, match="numba"):
        kcentre.ClusteredRows(x)


def test_run_rejects_bad_sizes() -> None:
    rows = kcentre.ClusteredRows(_points(30, 3, seed=12), num_clusters=3)
    for n in (0, 31):
        with pytest.raises(ValueError, match="cannot select"):
            rows.run(n)
    with pytest.raises(ValueError, match="forced"):
        rows.run(5, forced=torch.arange(4))


@pytest.mark.parametrize("chunk", [1, 7, 64, 250])
def test_chunked_loop_gives_the_picks_and_radii_of_one_call(chunk: int) -> None:
    x = _points(1500, 12, seed=13, duplicates=60)
    rows = kcentre.ClusteredRows(x, num_clusters=50)
    one_idx, one_radius = rows.run(250, start_index=3, chunk=250)
    calls: list[tuple[int, int]] = []
    idx, radius = rows.run(250, start_index=3, chunk=chunk, progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(idx, one_idx) and torch.equal(radius, one_radius)
    assert torch.equal(idx, greedy_coreset_indices(x, 250, reference=True, start_index=3))
    assert [d for d, _ in calls] == sorted({min(250, s + chunk) for s in range(0, 250, chunk)})
    assert all(t == 250 for _, t in calls)


def test_chunked_forced_and_initial_distance_runs_match_one_call() -> None:
    x = _points(600, 5, seed=14)
    rows = kcentre.ClusteredRows(x, num_clusters=30)
    picks = torch.randperm(600, generator=torch.Generator().manual_seed(2))[:90]
    assert torch.equal(rows.run(90, forced=picks, chunk=13)[1], rows.run(90, forced=picks, chunk=90)[1])
    init = torch.rand(600, generator=torch.Generator().manual_seed(3)) * 30.0
    first = int(torch.argmax(init))
    a = rows.run(90, start_index=first, min_d2=init, chunk=11)[0]
    assert torch.equal(a, rows.run(90, start_index=first, min_d2=init, chunk=90)[0])


def test_default_chunks_report_about_fifty_times_and_end_at_n() -> None:
    x = _points(20000, 4, seed=15)
    calls: list[int] = []
    idx = greedy_coreset_indices(x, 5000, progress=lambda done, total: calls.append(done))
    assert len(idx) == 5000 and calls[-1] == 5000
    assert kcentre.PROGRESS_CHUNKS - 1 <= len(calls) <= kcentre.PROGRESS_CHUNKS + 1
    assert calls == sorted(calls)


@pytest.mark.parametrize("reference", [True, False])
def test_torch_loops_report_progress_with_the_same_picks(monkeypatch, reference: bool) -> None:
    x = _points(400, 6, seed=16)
    plain = greedy_coreset_indices(x, 200, reference=reference)
    if not reference:
        monkeypatch.setattr(kcentre, "numba", None)  # the matvec loop
    calls: list[int] = []
    idx = greedy_coreset_indices(x, 200, reference=reference, progress=lambda done, total: calls.append(done))
    if reference:
        assert torch.equal(idx, plain)
    assert calls[-1] == 200 and calls == sorted(calls) and len(calls) >= 3
