"""Nearest-neighbour back-ends: exactness, chunking, torch vs FAISS."""

from __future__ import annotations

import pytest
import torch

from cmdiad.memory.knn import KnnIndex, nearest_neighbours


def _data(m: int = 150, n: int = 700, d: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)


def test_torch_matches_cdist() -> None:
    q, bank = _data()
    dist, idx = nearest_neighbours(q, bank, k=4)
    ref = torch.cdist(q.double(), bank.double()).topk(4, largest=False)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(dist.double(), ref.values, atol=1e-5)


def test_chunked_equals_unchunked() -> None:
    q, bank = _data()
    full = nearest_neighbours(q, bank, k=3, chunk_size=10_000, bank_chunk_size=10_000)
    chunked = nearest_neighbours(q, bank, k=3, chunk_size=7, bank_chunk_size=33)
    assert torch.equal(full[1], chunked[1])
    assert torch.allclose(full[0], chunked[0])


def test_faiss_flat_agrees_with_torch() -> None:
    q, bank = _data()
    dt, it = nearest_neighbours(q, bank, k=5)
    df, i_f = nearest_neighbours(q, bank, k=5, backend="faiss")
    assert torch.equal(it, i_f)
    assert torch.allclose(dt, df, atol=1e-5)


def test_bank_rows_are_at_distance_zero() -> None:
    _, bank = _data()
    dist, idx = nearest_neighbours(bank, bank, k=1)
    assert torch.equal(idx[:, 0], torch.arange(len(bank)))
    assert float(dist.max()) == 0.0


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_approximate_indexes_return_true_distances(kind: str) -> None:
    q, bank = _data(50, 2000, 16)
    index = KnnIndex(bank, backend="faiss", index=kind, nlist=8, nprobe=8, seed=0)
    dist, idx = index.search(q, 2)
    found = idx >= 0
    assert found.all()
    # Distances are recomputed exactly for the returned rows, and sorted.
    assert torch.allclose(dist, torch.linalg.vector_norm(q[:, None] - bank[idx], dim=-1), atol=1e-5)
    assert (dist[:, 0] <= dist[:, 1]).all()
    if kind == "ivf":  # nprobe = nlist visits every cell: exact
        assert torch.equal(idx, nearest_neighbours(q, bank, k=2)[1])


def test_index_is_reusable_and_validates() -> None:
    q, bank = _data()
    index = KnnIndex(bank)
    assert len(index) == len(bank)
    assert torch.equal(index.search(q, 2)[1], index.search(q, 2)[1])
    with pytest.raises(ValueError, match="k="):
        index.search(q, len(bank) + 1)
    with pytest.raises(ValueError):
        index.search(q[:, :5], 1)
    with pytest.raises(ValueError, match="faiss"):
        KnnIndex(bank, index="ivf")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_half_precision_bank_is_searched_like_its_float32_copy(backend: str) -> None:
    q, bank = _data()
    half = bank.half()
    d_half, i_half = KnnIndex(half, backend=backend, bank_chunk_size=97).search(q, 2)
    d_full, i_full = KnnIndex(half.float(), backend=backend).search(q, 2)
    assert torch.equal(i_half, i_full)
    assert torch.allclose(d_half, d_full)


def test_torch_search_ranks_near_ties_by_exact_distance() -> None:
    # Rows of norm ~1000 whose distances to the query differ by 1e-4: the expanded formula's
    # float32 error (~0.06 at |q|^2 = 1e6) cannot tell them apart; exact re-ranking can.
    gen = torch.Generator().manual_seed(0)
    v = 1000.0 * torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    offsets = torch.eye(64)[:6] * torch.tensor([0.0101, 0.0102, 0.0103, 0.0104, 0.0105, 0.0100])[:, None]
    bank = torch.cat([v + offsets, v + 5.0 + torch.randn(20, 64, generator=gen)])
    dist, idx = KnnIndex(bank).search(v[None], k=2)
    assert idx[0].tolist() == [5, 0]
    assert dist[0, 0].item() == pytest.approx(0.0100, rel=1e-2)
