"""Pruned exact greedy k-centre (farthest-point) selection on the CPU.

The greedy step "add the point farthest from the selected set, then lower every point's distance
to the set" is exact but streams the whole matrix per step. Here the rows are first grouped into
coarse clusters (two-level k-means, seeded); each cluster keeps its centroid ``c``, radius ``r``
(largest member-centroid distance) and the largest current min distance of its members. By the
triangle inequality a new centre ``q`` cannot lower the min distance of any member of a cluster
when ``(|q − c| − r)² ≥ max min-distance²`` of that cluster, so the cluster is skipped; inside a
visited cluster a member ``p`` is skipped when ``(|q − c| − |p − c|)² ≥ min-distance²(p)``. The
bounds are applied with a relative slack, so only provably unaffected points are skipped: the
picks are those of the brute-force loop (ties broken towards the smallest row index, like
``torch.argmax``), up to float rounding at near-ties.

The step loop is compiled with numba (an optional import): :func:`available` says whether it can
run. Distances are ``Σ (z − q)²`` computed in float64 from the float32 rows and rounded once to
float32, like the torch reference loop: the summation order then hardly matters
(the two loops agree bit for bit but for rare float32 rounding boundaries), and duplicate rows tie
exactly at 0 (no expanded ``|z|² − 2 z·q + |q|²`` form).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

try:  # numba is optional: without it the callers fall back to the torch loop
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

SLACK = 1e-4
"""Relative slack on the triangle-inequality bounds (guards float32 rounding)."""

PROGRESS_CHUNKS = 50
"""The greedy loop runs in about this many compiled calls, reporting progress between them."""
MIN_CHUNK = 64
"""Fewest picks per compiled call (a call's Python overhead is tens of microseconds)."""

_KMEANS_ITERS = 6
_TRAIN_PER_CENTRE = 64
_ASSIGN_CHUNK = 32768


def available() -> bool:
    """Whether the compiled pruned loop can run (numba imported)."""
    return numba is not None


def chunk_steps(n: int) -> int:
    """Picks per compiled call: about ``n / PROGRESS_CHUNKS``, at least ``MIN_CHUNK`` (the loop state persists)."""
    return max(MIN_CHUNK, math.ceil(n / PROGRESS_CHUNKS))


def default_num_clusters(n: int) -> int:
    """Coarse clusters for ``n`` rows: about ``4·sqrt(n)``, between 1 and 4096, at most ``n // 8``."""
    return max(1, min(4096, int(4 * math.sqrt(n)), n // 8))


def _assign(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest centre of every row (chunked ``|c|² − 2 z·c``)."""
    c_sq = torch.einsum("kd,kd->k", centres, centres)
    out = torch.empty(z.shape[0], dtype=torch.long)
    for s in range(0, z.shape[0], _ASSIGN_CHUNK):
        d = torch.addmm(c_sq[None, :], z[s : s + _ASSIGN_CHUNK], centres.T, alpha=-2.0)
        out[s : s + _ASSIGN_CHUNK] = d.argmin(dim=1)
    return out


def _kmeans(z: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Labels (N,) of nearest centres after a few Lloyd iterations on a seeded subsample.

    The centres start at ``k`` seeded random rows and are refined on at most ``_TRAIN_PER_CENTRE·k``
    rows (empty cells keep their centre); every row is then assigned once.
    """
    k = min(k, z.shape[0])
    perm = torch.randperm(z.shape[0], generator=gen)
    centres = z[perm[:k]].clone()
    if k == 1:
        return torch.zeros(z.shape[0], dtype=torch.long)
    train = z[perm[: _TRAIN_PER_CENTRE * k]] if z.shape[0] > _TRAIN_PER_CENTRE * k else z
    for _ in range(_KMEANS_ITERS):
        labels = _assign(train, centres)
        order = torch.argsort(labels)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        offsets = torch.cumsum(counts, 0)[filled] - counts[filled]
        # segment sums of the sorted rows: far faster than index_add_ on the CPU
        sums = np.add.reduceat(train[order].numpy(), offsets.numpy(), axis=0)
        centres[filled] = torch.from_numpy(sums) / counts[filled, None].float()
    return _assign(z, centres)


def coarse_clusters(z: torch.Tensor, num_clusters: int, seed: int = 0) -> torch.Tensor:
    """Two-level k-means labels (N,) in ``[0, num_clusters')``, ``num_clusters' ≈ num_clusters``.

    A top level of ``sqrt(num_clusters)`` cells, each split in proportion to its size, costs
    ``O(N·sqrt(num_clusters)·d)`` instead of flat k-means' ``O(N·num_clusters·d)``.

    Args:
        z: ``(N, d)`` float32 CPU rows.
        num_clusters: Wanted number of leaf clusters.
        seed: Seed of the k-means initialisations.
    """
    gen = torch.Generator().manual_seed(seed)
    n = z.shape[0]
    top_k = max(1, int(round(math.sqrt(num_clusters))))
    top = _kmeans(z, top_k, gen)
    labels = torch.empty(n, dtype=torch.long)
    next_label = 0
    for t in range(int(top.max()) + 1):
        members = torch.nonzero(top == t).flatten()
        if len(members) == 0:
            continue
        sub_k = max(1, round(num_clusters * len(members) / n))
        sub = _kmeans(z[members], sub_k, gen)
        labels[members] = sub + next_label
        next_label += int(sub.max()) + 1
    return labels


if numba is not None:
    _FLAGS = {"reassoc", "contract", "nsz"}  # vectorised sums; no 'ninf' (min distances start at inf)

    @numba.njit(fastmath=_FLAGS, cache=True, nogil=True)
    def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.float32:
        """``Σ (a − b)²`` of float32 rows, computed in float64 and rounded once to float32."""
        acc = 0.0
        for i in range(a.shape[0]):
            diff = np.float64(a[i]) - np.float64(b[i])
            acc += diff * diff
        return np.float32(acc)

    @numba.njit(fastmath=_FLAGS, cache=True, nogil=True)
    def _visit(z, q, lo, hi, d_qc, d_pc, min_d2, slack):
        """Lower min distances of rows [lo, hi) to q; returns (largest min distance, its row)."""
        best, best_row = np.float32(-2.0), lo
        for p in range(lo, hi):
            m = min_d2[p]
            gap = abs(d_qc - d_pc[p]) - slack * (d_qc + d_pc[p])
            if gap <= 0.0 or gap * gap < m:
                d2 = _sq_dist(z[p], q)
                if d2 < m:
                    m = d2
                    min_d2[p] = m
            if m > best:
                best, best_row = m, p
        return best, best_row

    @numba.njit(cache=True, nogil=True)
    def _next_pick(cmax, carg, order):
        """Row with the largest min distance, the smallest original index on ties."""
        best, row = np.float32(-np.inf), carg[0]
        for j in range(cmax.shape[0]):
            c = cmax[j]
            if c > best or (c == best and order[carg[j]] < order[row]):
                best, row = c, carg[j]
        return row

    @numba.njit(cache=True, nogil=True)
    def _pruned_steps(
        z, order, starts, centres, radius, d_pc, min_d2, cmax, carg, out, radii2, row, s0, s1, forced, slack
    ):
        """Steps ``[s0, s1)`` of the greedy loop over cluster-sorted rows ``z``; returns the next row.

        ``row`` is picked at step ``s0``; then the farthest row, or ``forced[step]`` when ``forced``
        is not empty. ``min_d2`` (squared min distances), ``cmax``/``carg`` (per cluster: largest
        min distance and its row) are updated in place; ``out`` gets the original indices and
        ``radii2`` the squared covering radius after each pick (-1 once every row is picked).
        """
        n_clusters = centres.shape[0]
        n = out.shape[0]
        for step in range(s0, s1):
            out[step] = order[row]
            q = z[row]
            min_d2[row] = -1.0
            for j in range(n_clusters):
                lo, hi = starts[j], starts[j + 1]
                d_qc = math.sqrt(_sq_dist(centres[j], q))
                gap = d_qc - radius[j] - slack * (d_qc + radius[j])
                if lo == hi or (gap > 0.0 and gap * gap >= cmax[j]):
                    continue
                cmax[j], carg[j] = _visit(z, q, lo, hi, d_qc, d_pc, min_d2, slack)
            row = _next_pick(cmax, carg, order)
            radii2[step] = min_d2[row]
            if forced.shape[0] > 0 and step + 1 < n:
                row = forced[step + 1]
        return row


def _cluster_layout(z: torch.Tensor, labels: torch.Tensor):
    """Rows sorted by cluster (stable), offsets, centroids, radii and member-centroid distances."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    keep = counts > 0
    starts = torch.zeros(int(keep.sum()) + 1, dtype=torch.long)
    starts[1:] = torch.cumsum(counts[keep], 0)
    zs = z[order].contiguous()
    sums = torch.from_numpy(np.add.reduceat(zs.numpy(), starts[:-1].numpy(), axis=0))
    centres = (sums / counts[keep, None].float()).contiguous()
    member = torch.repeat_interleave(torch.arange(len(starts) - 1), counts[keep])
    d_pc = torch.empty(zs.shape[0])
    for s in range(0, zs.shape[0], _ASSIGN_CHUNK):
        diff = zs[s : s + _ASSIGN_CHUNK] - centres[member[s : s + _ASSIGN_CHUNK]]
        d_pc[s : s + _ASSIGN_CHUNK] = torch.linalg.vector_norm(diff, dim=1)
    radius = torch.zeros(len(starts) - 1).scatter_reduce_(0, member, d_pc, reduce="amax")
    return zs, order, starts, centres, radius, d_pc


class ClusteredRows:
    """Rows grouped into coarse clusters for the pruned loop (built once, run many times).

    Args:
        z: ``(N, d)`` float32 CPU rows (already projected).
        num_clusters: Coarse clusters; default :func:`default_num_clusters`.
        seed: Seed of the clustering (the picks do not depend on it, only the speed).
    """

    def __init__(self, z: torch.Tensor, num_clusters: int | None = None, seed: int = 0) -> None:
        if numba is None:
            raise RuntimeError("the pruned greedy loop needs numba")
        z = z.detach().float().contiguous()
        n = z.shape[0]
        k = default_num_clusters(n) if num_clusters is None else max(1, min(num_clusters, n))
        zs, order, starts, centres, radius, d_pc = _cluster_layout(z, coarse_clusters(z, k, seed))
        self.num_rows, self.num_clusters = n, len(starts) - 1
        self._arrays = tuple(t.numpy() for t in (zs, order, starts, centres, radius, d_pc))
        self._position = torch.empty(n, dtype=torch.long)
        self._position[order] = torch.arange(n)

    def run(
        self,
        n: int,
        *,
        start_index: int = 0,
        min_d2: torch.Tensor | None = None,
        forced: torch.Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy picks and covering radii.

        Args:
            n: Rows to select, ``1 <= n <= N``.
            start_index: The first selected row (ignored with ``forced``).
            min_d2: ``(N,)`` initial squared min distances (default ``inf``; approximate greedy
                starts from its own).
            forced: ``(n,)`` rows to take in this order instead of the farthest ones (then only
                the radii are of interest).
            progress: Called as ``progress(picked, n)`` after each chunk of compiled steps.
            chunk: Picks per compiled call (default :func:`chunk_steps`); the picks do not
                depend on it.

        Returns:
            ``idx`` (n,) int64 rows in selection order and ``radius`` (n,) float32: the covering
            radius of the first ``i + 1`` picks (largest distance of any row to them; with
            ``min_d2`` given, of the rows to the picks or their initial distance).
        """
        if not 1 <= n <= self.num_rows or (forced is not None and len(forced) != n):
            given = None if forced is None else len(forced)
            raise ValueError(f"cannot select {n} of {self.num_rows} rows (forced rows given: {given})")
        pos = self._position.numpy()
        init = np.full(self.num_rows, np.inf, dtype=np.float32)
        if min_d2 is not None:
            init[pos] = min_d2.detach().cpu().float().numpy()
        rows = np.empty(0, dtype=np.int64) if forced is None else pos[forced.cpu().numpy()]
        first = int(pos[start_index] if forced is None else rows[0])
        arrays = self._arrays
        cmax = np.full(self.num_clusters, np.inf, dtype=np.float32)  # visits every cluster at step 0
        carg = arrays[2][:-1].copy()
        idx, radii2 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
        step = chunk_steps(n) if chunk is None else max(1, int(chunk))
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            first = _pruned_steps(*arrays, init, cmax, carg, idx, radii2, first, s0, s1, rows, np.float32(SLACK))
            if progress is not None:
                progress(s1, n)
        return torch.from_numpy(idx), torch.from_numpy(np.sqrt(np.maximum(radii2, 0.0)))
