"""Coreset subsampling of memory banks (method-spec §3.2).

Pure functions (:func:`greedy_coreset_indices`, :func:`approximate_greedy_coreset_indices`,
:func:`random_projection`) plus small samplers with one :meth:`select` method (PatchCore's
contract: input device preserved, indices returned), registered in :data:`SAMPLERS`.

Every random choice takes an explicit ``seed`` (a local ``torch.Generator``), unlike the
reference code, which relied on numpy's global RNG (method-spec §8 item 21).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from cmdiad.config import CoresetConfig
from cmdiad.memory import kcentre
from cmdiad.registry import Registry

logger = logging.getLogger(__name__)

_ROW_CHUNK = 65536  # rows per projection chunk: bounds the temporary of a dtype cast
_LOOP_CHUNK = 16384  # rows per distance block of the reference loop

Progress = Callable[[int, int], None]
"""``progress(picked, total)``, called between chunks of the greedy loop."""


def _report_every(n: int) -> int:
    """Steps between progress calls of the torch loops (about 50 calls in all)."""
    return kcentre.chunk_steps(n)


def johnson_lindenstrauss_dim(n: int, eps: float) -> int:
    """Target dimension that keeps pairwise distances within ``1 ± eps`` (sklearn's formula).

    Args:
        n: Number of points.
        eps: Distortion in (0, 1).

    Returns:
        ``floor(4 ln n / (eps²/2 − eps³/3))``.
    """
    if not 0.0 < eps < 1.0 or n < 1:
        raise ValueError(f"need n >= 1 and eps in (0, 1), got n={n}, eps={eps}")
    return int(4.0 * math.log(n) / (eps**2 / 2.0 - eps**3 / 3.0))


def coreset_size(ratio: float, n: int) -> int:
    """Points kept from ``n`` at ``ratio``: ``ceil(ratio·n)``, at least 1, at most ``n``."""
    # The 1e-9 guards float noise, e.g. 0.1 * 30 = 3.0000000000000004 must give 3.
    return min(n, max(1, math.ceil(ratio * n - 1e-9)))


def sparse_projection_matrix(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A sparse random projection matrix (Achlioptas / Li et al., sklearn's default density).

    Entries are ``±sqrt(1/density)/sqrt(out_dim)`` with probability ``density/2`` each and 0
    otherwise, ``density = 1/sqrt(in_dim)``.

    Returns:
        ``(in_dim, out_dim)`` float32 on the CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    density = 1.0 / math.sqrt(in_dim)
    value = math.sqrt(1.0 / density) / math.sqrt(out_dim)
    u = torch.rand(in_dim, out_dim, generator=gen)
    mat = torch.zeros(in_dim, out_dim)
    mat[u < density / 2] = -value
    mat[u > 1.0 - density / 2] = value
    return mat


def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Project rows with a seeded sparse random projection.

    Args:
        x: ``(N, D)`` points.
        dim: Target dimension ``d``.
        seed: Seed of the projection matrix.

    Returns:
        ``(N, d)`` contiguous float32 on ``x``'s device.
    """
    mat = sparse_projection_matrix(x.shape[1], dim, seed).to(x.device)
    out = torch.empty(x.shape[0], dim, dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        torch.mm(x[start : start + _ROW_CHUNK].float(), mat, out=out[start : start + _ROW_CHUNK])
    return out


def _projected(x: torch.Tensor, projection_dim: int | None, eps: float | None, seed: int) -> torch.Tensor:
    """The matrix the greedy search runs on: projected when that reduces the dimension."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) matrix, got {tuple(x.shape)}")
    dim = projection_dim
    if dim is None and eps is not None:
        dim = johnson_lindenstrauss_dim(x.shape[0], eps)
    if dim is None or dim >= x.shape[1]:
        return x.float().contiguous()
    return random_projection(x, dim, seed)


def _greedy_steps(
    lower: Callable[[torch.Tensor], None], min_d2: torch.Tensor, first: torch.Tensor, n: int,
    progress: Progress | None,
) -> torch.Tensor:
    """``n`` greedy picks from ``first``: each pick lowers ``min_d2`` by its distances (``lower``),
    is marked -1 so it is never picked again, and the farthest remaining point comes next."""
    out = torch.empty(n, dtype=torch.long, device=min_d2.device)
    idx, every = first, _report_every(n)
    for step in range(n):
        out[step] = idx
        lower(idx)
        min_d2[idx] = -1.0
        idx = torch.argmax(min_d2)
        if progress is not None and ((step + 1) % every == 0 or step + 1 == n):
            progress(step + 1, n)
    return out


def _greedy_loop(
    z: torch.Tensor, min_d2: torch.Tensor, first: torch.Tensor, n: int, progress: Progress | None = None
) -> torch.Tensor:
    """Reference k-centre greedy loop (torch, any device) from ``first`` given squared min distances ``min_d2``.

    Per step, ``Σ (z − c)²`` over row chunks (in float64, rounded once to float32, so the result
    hardly depends on the summation order; duplicates tie exactly at 0) lowers ``min_d2``; selected
    points are marked -1 so they are never picked twice. Holds a float64 copy of ``z``.
    """
    z64 = z.double()

    def lower(idx: torch.Tensor) -> None:
        centre = z64[idx]
        for start in range(0, z.shape[0], _LOOP_CHUNK):
            part = min_d2[start : start + _LOOP_CHUNK]
            d2 = (z64[start : start + _LOOP_CHUNK] - centre).square_().sum(dim=1).float()
            torch.minimum(part, d2, out=part)

    return _greedy_steps(lower, min_d2, first, n, progress)


def _matvec_loop(
    z: torch.Tensor, min_d2: torch.Tensor, first: torch.Tensor, n: int, progress: Progress | None = None
) -> torch.Tensor:
    """The greedy loop with one fused float32 ``|z|² − 2 z·c + |c|²`` matrix-vector product per step.

    A quarter of the reference loop's memory traffic (fast on a GPU); its rounding may break
    near-ties differently from the reference, and duplicates are kept apart by the -1 marks.
    """
    sq = torch.einsum("nd,nd->n", z, z)

    def lower(idx: torch.Tensor) -> None:
        d2 = torch.addmv(sq, z, z[idx], alpha=-2.0).add_(sq[idx])
        torch.minimum(min_d2, d2, out=min_d2)

    return _greedy_steps(lower, min_d2, first, n, progress)


def _fast_loop(
    z: torch.Tensor, min_d2: torch.Tensor, first: int, n: int, seed: int, progress: Progress | None = None
) -> torch.Tensor:
    """Greedy picks: the pruned compiled loop on the CPU (the reference's picks), else the matvec loop."""
    if z.device.type == "cpu" and kcentre.available():
        idx, _ = kcentre.ClusteredRows(z, seed=seed).run(n, start_index=first, min_d2=min_d2, progress=progress)
        return idx
    if z.device.type == "cpu":
        logger.warning("numba is not importable: the greedy coreset runs the slower torch matvec loop")
    return _matvec_loop(z, min_d2, torch.tensor(first, device=z.device), n, progress)


def _check_n(n: int, total: int) -> None:
    if not 1 <= n <= total:
        raise ValueError(f"cannot select {n} of {total} points")


def greedy_coreset_indices(
    x: torch.Tensor,
    n: int,
    *,
    projection_dim: int | None = None,
    eps: float | None = None,
    seed: int = 0,
    start_index: int = 0,
    reference: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Exact greedy k-centre selection (method-spec §3.2), fp32.

    On the CPU the loop is the pruned compiled one of :mod:`cmdiad.memory.kcentre` (the reference
    loop's picks from a small fraction of its distance computations); a tensor on another device,
    or a missing numba, runs the float32 matrix-vector loop; ``reference=True`` the float64 torch
    reference loop (slow; tests and parity checks).

    Args:
        x: ``(N, D)`` points.
        n: Points to select, ``1 <= n <= N``.
        projection_dim: Dimension of the random projection the search runs in; ``None`` with
            ``eps`` derives it from Johnson-Lindenstrauss; no projection when it is not < D.
        eps: Johnson-Lindenstrauss distortion used when ``projection_dim`` is None.
        seed: Seed of the projection (and of the pruning clusters, which do not change the picks).
        start_index: The first selected point.
        reference: Run the plain torch loop (tests, parity checks).
        progress: ``progress(picked, n)`` about 50 times during the loop (the picks do not change).

    Returns:
        ``(n,)`` int64 indices on ``x``'s device, in selection order, without repeats.
    """
    _check_n(n, x.shape[0])
    z = _projected(x, projection_dim, eps, seed)
    min_d2 = torch.full((z.shape[0],), float("inf"), device=z.device)
    if reference:
        return _greedy_loop(z, min_d2, torch.tensor(start_index, device=z.device), n, progress)
    return _fast_loop(z, min_d2, start_index, n, seed, progress).to(x.device)


def approximate_greedy_coreset_indices(
    x: torch.Tensor,
    n: int,
    *,
    num_starting_points: int = 10,
    projection_dim: int | None = 128,
    eps: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """PatchCore's approximate greedy selection.

    The min distance of every point starts as its *mean* distance to a seeded random set of
    starting points (instead of the distance to one selected point); the loop is then the
    exact greedy one. The starting points are not part of the result.

    Args:
        x: ``(N, D)`` points.
        n: Points to select.
        num_starting_points: Size of the random starting set.
        projection_dim: Projection dimension (PatchCore uses 128); None with ``eps`` uses JL.
        eps: Johnson-Lindenstrauss distortion used when ``projection_dim`` is None.
        seed: Seed of the projection and the starting set.
        progress: ``progress(picked, n)`` during the loop.

    Returns:
        ``(n,)`` int64 indices on ``x``'s device.
    """
    _check_n(n, x.shape[0])
    z = _projected(x, projection_dim, eps, seed)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randperm(z.shape[0], generator=gen)[: min(num_starting_points, z.shape[0])]
    sq = torch.einsum("nd,nd->n", z, z)
    centres = z[starts.to(z.device)]
    d2 = (sq[:, None] - 2.0 * z @ centres.T + sq[starts.to(z.device)][None, :]).clamp_min_(0.0)
    min_d2 = d2.sqrt_().mean(dim=1).square_()
    return _fast_loop(z, min_d2, int(torch.argmax(min_d2)), n, seed, progress).to(x.device)


def covering_radius(x: torch.Tensor, selected_idx: torch.Tensor) -> float:
    """Largest distance from any point of ``x`` (N, D) to its nearest selected point."""
    from cmdiad.memory.knn import nearest_neighbours

    dist, _ = nearest_neighbours(x, x[selected_idx], k=1)
    return float(dist.max())


class _Sampler:
    """Base of the samplers: validates the ratio and fixes the output size."""

    def __init__(self, ratio: float, *, seed: int = 0, eps: float = 0.9) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.seed = seed
        self.eps = eps

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Indices (n,) of the kept rows of ``x`` (N, D), ``n = ceil(ratio·N)``, on x's device.

        ``progress(picked, n)`` is called while a greedy sampler runs (the others ignore it).
        """
        raise NotImplementedError

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The kept rows ``x[select(x)]``, (n, D)."""
        return x[self.select(x)]


SAMPLERS: Registry[_Sampler] = Registry("sampler")


@SAMPLERS.register("greedy")
class GreedyCoresetSampler(_Sampler):
    """Exact greedy k-centre in a JL random projection (dimension from ``eps``)."""

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        n = coreset_size(self.ratio, x.shape[0])
        return greedy_coreset_indices(x, n, eps=self.eps, seed=self.seed, progress=progress)


@SAMPLERS.register("greedy_reference")
class GreedyReferenceCoresetSampler(_Sampler):
    """The same picks as ``greedy`` from the plain torch loop (slow; tests and parity checks)."""

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        n = coreset_size(self.ratio, x.shape[0])
        return greedy_coreset_indices(x, n, eps=self.eps, seed=self.seed, reference=True, progress=progress)


@SAMPLERS.register("approximate_greedy")
class ApproximateGreedyCoresetSampler(_Sampler):
    """PatchCore's approximate greedy selection in a JL random projection."""

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        n = coreset_size(self.ratio, x.shape[0])
        return approximate_greedy_coreset_indices(
            x, n, projection_dim=None, eps=self.eps, seed=self.seed, progress=progress
        )


@SAMPLERS.register("random")
class RandomSampler(_Sampler):
    """A seeded uniform random subset (sorted indices)."""

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        n = coreset_size(self.ratio, x.shape[0])
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(x.shape[0], generator=gen)[:n].sort().values.to(x.device)


@SAMPLERS.register("identity")
class IdentitySampler(_Sampler):
    """Keeps every row (ratio is ignored beyond validation)."""

    def select(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        return torch.arange(x.shape[0], device=x.device)


def build_sampler(cfg: CoresetConfig) -> _Sampler:
    """The sampler ``cfg.sampler`` with the config's ratio, seed and eps."""
    return SAMPLERS.get(cfg.sampler)(cfg.ratio, seed=cfg.seed, eps=cfg.projection_eps)
