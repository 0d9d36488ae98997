"""Exact and approximate nearest-neighbour search (torch or FAISS).

The torch back-end works in query chunks x bank chunks and keeps a running top-k, so its extra
memory is bounded by ``chunk_size x bank_chunk_size`` whatever the bank size. Every back-end
returns true L2 distances (not squared), recomputed exactly for the returned neighbours, so the
back-ends agree to float tolerance and a point found in the bank has distance exactly 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

BANK_CHUNK_SIZE = 16384
"""Default bank rows per distance block of the torch back-end."""


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError(
            "the FAISS nearest-neighbour back-end needs the 'faiss-cpu' (or faiss-gpu) package; "
            "install it or use knn_backend='torch'"
        ) from exc
    return faiss


def _check_inputs(queries: torch.Tensor, bank: torch.Tensor, k: int) -> None:
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} are not (M,D),(N,D)")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must be in [1, {bank.shape[0]}] (bank size)")


def _exact_distances(queries: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``|q_i − bank[idx_ij]|`` (M, k); ``inf`` where ``idx`` is -1 (no neighbour found)."""
    found = idx >= 0
    diff = queries[:, None, :].float() - bank[idx.clamp_min(0)].float()
    dist = torch.linalg.vector_norm(diff, dim=-1)
    return torch.where(found, dist, torch.full_like(dist, float("inf")))


def _row_norms(bank: torch.Tensor, bank_chunk: int) -> torch.Tensor:
    """``|b|²`` (N,) float32, converted chunk by chunk (a float16 bank is never copied whole)."""
    out = torch.empty(bank.shape[0], device=bank.device)
    for start in range(0, bank.shape[0], bank_chunk):
        b = bank[start : start + bank_chunk].float()
        out[start : start + bank_chunk] = torch.einsum("nd,nd->n", b, b)
    return out


def _torch_topk_block(
    q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, k: int, bank_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (smallest) squared distances less ``|q|^2`` of one query chunk against all bank chunks.

    ``|q|^2`` is the same for every bank row of a query, so the ranking leaves it out (one pass
    less over each distance block). The working set is one ``(chunk, bank_chunk)`` block plus
    one float32 bank chunk.
    """
    best_d2 = best_idx = None
    for start in range(0, bank.shape[0], bank_chunk):
        b = bank[start : start + bank_chunk].float()
        d2 = torch.addmm(bank_sq[None, start : start + bank_chunk], q, b.T, alpha=-2.0)
        kk = min(k, b.shape[0])
        d2, idx = torch.topk(d2, kk, dim=1, largest=False)
        if start:
            idx = idx + start
        if best_d2 is not None:
            d2, pos = torch.topk(torch.cat([best_d2, d2], 1), k, dim=1, largest=False)
            idx = torch.gather(torch.cat([best_idx, idx], 1), 1, pos)
        best_d2, best_idx = d2, idx
    return best_d2, best_idx


def nearest_rows(
    q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, k: int, candidates: int, bank_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact L2 ``k`` nearest bank rows of ``q`` ``(M, D)``: distances and indices ``(M, k)``, ascending.

    The expanded formula ranks ``candidates >= k`` rows (bank chunk by bank chunk); their
    distances are then recomputed as ``|q - b|`` and re-sorted. Where a query lies very close to
    bank rows (hallucinated features do), the expanded formula's float32 cancellation can rank a
    farther row first, so the extra candidates make the result the exact nearest neighbours.
    With ``bank_chunk >= len(bank)`` it is a fixed sequence of tensor ops (the ONNX graph's search).
    """
    _, idx = _torch_topk_block(q, bank, bank_sq, candidates, bank_chunk)
    dist = torch.linalg.vector_norm(q[:, None, :] - bank[idx].float(), dim=-1)
    dist, order = torch.sort(dist, dim=1)
    return dist[:, :k], torch.gather(idx, 1, order[:, :k])


RERANK_CANDIDATES = 8
"""Nearest rows found by the expanded formula and re-ranked by exact distance (torch back-end)."""


class KnnIndex:
    """A search index built once from a bank and queried many times.

    Args:
        bank: ``(N, D)`` rows to search (kept by reference; distances are refined against it).
        backend: ``"torch"`` (exact, chunked) or ``"faiss"``.
        index: FAISS index kind: ``"flat"`` (exact), ``"ivf"`` or ``"ivfpq"`` (approximate).
        chunk_size: Query rows per block (torch back-end, and FAISS query batches).
        bank_chunk_size: Bank rows per block (torch back-end).
        nlist: IVF cells; default ``clamp(sqrt(N), 1, N // 39)``. IVF/PQ training uses a seeded
            subsample of at most ``64·nlist`` bank rows (bounds the k-means cost).
        nprobe: IVF cells visited per query.
        m: PQ sub-quantizers (must divide D); default the largest of 64, 32, ... dividing D.
        seed: Seed of the IVF/PQ k-means training.
    """

    def __init__(
        self,
        bank: torch.Tensor,
        *,
        backend: str = "torch",
        index: str = "flat",
        chunk_size: int = 4096,
        bank_chunk_size: int = BANK_CHUNK_SIZE,
        nlist: int | None = None,
        nprobe: int = 8,
        m: int | None = None,
        seed: int = 0,
    ) -> None:
        if backend not in ("torch", "faiss") or index not in ("flat", "ivf", "ivfpq"):
            raise ValueError(f"unknown backend/index {backend!r}/{index!r}")
        if backend == "torch" and index != "flat":
            raise ValueError(f"index {index!r} needs backend='faiss'")
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (N, D) matrix, got {tuple(bank.shape)}")
        self.bank = bank
        self.backend, self.kind = backend, index
        self.chunk_size, self.bank_chunk_size = chunk_size, bank_chunk_size
        self._faiss = self._bank_sq = None
        if backend == "torch":
            self._bank_sq = _row_norms(bank, bank_chunk_size)
        else:
            self._faiss = _build_faiss(bank, index, nlist=nlist, nprobe=nprobe, m=m, seed=seed)

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest bank rows of each query.

        Args:
            queries: ``(M, D)``.
            k: Neighbours per query.

        Returns:
            ``dist`` (M, k) float32 L2 distances, ascending, and ``idx`` (M, k) int64 bank rows,
            both on the queries' device. Approximate indexes may return ``idx = -1`` and
            ``dist = inf`` where fewer than ``k`` neighbours were found.
        """
        _check_inputs(queries, self.bank, k)
        q = queries.to(self.bank.device)
        if self._faiss is None:
            # A few more candidates than asked, re-ranked by exact distances: the expanded
            # formula's float32 cancellation can rank a farther row first among near-ties.
            candidates = min(len(self), max(k, RERANK_CANDIDATES))
            parts = [nearest_rows(q[s : s + self.chunk_size].float(), self.bank, self._bank_sq, k, candidates,
                                  self.bank_chunk_size) for s in range(0, q.shape[0], self.chunk_size)]
            dist, idx = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            return dist.to(queries.device), idx.to(queries.device)
        idx = self._faiss_search(queries, k).to(self.bank.device)
        dist = torch.cat(
            [
                _exact_distances(q[s : s + self.chunk_size], self.bank, idx[s : s + self.chunk_size])
                for s in range(0, q.shape[0], self.chunk_size)
            ]
        )
        # Re-sort: exact distances may reorder near-ties of an approximate index.
        dist, order = torch.sort(dist, dim=1)
        return dist.to(queries.device), torch.gather(idx, 1, order).to(queries.device)

    def _faiss_search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        out = np.empty((queries.shape[0], k), dtype=np.int64)
        for start in range(0, queries.shape[0], self.chunk_size):
            q = queries[start : start + self.chunk_size].detach().float().cpu().numpy()
            _, out[start : start + len(q)] = self._faiss.search(np.ascontiguousarray(q), k)
        return torch.from_numpy(out)


def _default_m(dim: int) -> int:
    return next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= max(1, dim // 4))


def _as_numpy(rows: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows.detach().float().cpu().numpy())


def _training_rows(bank: torch.Tensor, limit: int, seed: int) -> np.ndarray:
    if bank.shape[0] <= limit:
        return _as_numpy(bank)
    keep = np.sort(np.random.default_rng(seed).choice(bank.shape[0], limit, replace=False))
    return _as_numpy(bank[torch.from_numpy(keep).to(bank.device)])


def _build_faiss(bank: torch.Tensor, kind: str, *, nlist: int | None, nprobe: int, m: int | None, seed: int):
    """A trained, filled FAISS index over ``bank`` (N, D), filled chunk by chunk (no full float32 copy)."""
    faiss = _import_faiss()
    n, dim = bank.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    else:
        nlist = nlist or max(1, min(int(math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatL2(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist)
        else:
            m = m or _default_m(dim)
            nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits)
            index.pq.cp.seed = seed
        index.cp.seed = seed
        index.train(_training_rows(bank, 64 * nlist, seed))
        index.nprobe = min(nprobe, nlist)
    for start in range(0, n, BANK_CHUNK_SIZE):
        index.add(_as_numpy(bank[start : start + BANK_CHUNK_SIZE]))
    return index


def nearest_neighbours(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    *,
    backend: str = "torch",
    chunk_size: int = 4096,
    bank_chunk_size: int = BANK_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest neighbours of every query in ``bank`` (one-off; see :class:`KnnIndex`).

    Args:
        queries: ``(M, D)``.
        bank: ``(N, D)``.
        k: Neighbours per query.
        backend: ``"torch"`` (chunked over queries and bank) or ``"faiss"`` (IndexFlatL2).
        chunk_size: Query rows per block.
        bank_chunk_size: Bank rows per block (torch).

    Returns:
        ``dist`` (M, k) L2 distances ascending and ``idx`` (M, k) int64.
    """
    index = KnnIndex(bank, backend=backend, chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
    return index.search(queries, k)
