"""One modality's memory bank: collect, standardise, subsample, search (§3.1-3.3).

Patch scores of *invalid* patches (``PatchFeatures.valid`` False, e.g. no 3D points under the
patch) are 0: such a patch carries no data in this modality, so it cannot be judged anomalous
here; the other modality's stream covers it. Invalid patches are never added to the bank, and
the image score only looks at valid patches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from cmdiad.config import MemoryConfig
from cmdiad.features.base import image_view
from cmdiad.memory.coreset import build_sampler, coreset_size
from cmdiad.memory.knn import KnnIndex
from cmdiad.types import PatchFeatures

logger = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 2**20
"""Bytes per collection block: above glibc's largest mmap threshold (32 MiB), so a freed block goes back to the OS."""


def reweighted_image_score(
    s_star: torch.Tensor, neighbour_dists: torch.Tensor, dim: int, *, reweight: bool = True
) -> torch.Tensor:
    """PatchCore's image score ``w·s*`` (method-spec §3.3 step 2).

    ``w = 1 − exp(s*/T) / Σ_j exp(d_j/T)`` with ``T = sqrt(dim)``, computed as
    ``1 − exp(s*/T − logsumexp(d/T))`` so large distances cannot overflow the denominator.

    Args:
        s_star: ``(B,)`` largest patch distance of each sample.
        neighbour_dists: ``(B, J)`` distances from that patch to the J bank neighbours of its
            nearest bank row (the row itself excluded); J = 0 gives ``w = 1``.
        dim: Feature dimension.
        reweight: False returns ``s_star`` unchanged (plain max).

    Returns:
        ``(B,)`` image scores.
    """
    if not reweight or neighbour_dists.shape[1] == 0:
        return s_star
    temp = math.sqrt(dim)
    log_ratio = s_star / temp - torch.logsumexp(neighbour_dists / temp, dim=1)
    return (1.0 - torch.exp(log_ratio)) * s_star


class _RowBlocks:
    """Rows appended into fixed-size blocks, concatenated once with each block freed as it is copied.

    Collecting N rows this way peaks at the bank plus one block, where ``torch.cat`` of per-batch
    parts would hold the parts and the result (and freed small parts stay in the heap).
    """

    def __init__(self) -> None:
        self.blocks: list[torch.Tensor] = []
        self.fill = 0  # rows used in the last block
        self.num_rows = 0

    @property
    def dim(self) -> int | None:
        return int(self.blocks[0].shape[1]) if self.blocks else None

    def append(self, rows: torch.Tensor) -> None:
        """Copy ``rows`` (n, C) in."""
        start = 0
        while start < rows.shape[0]:
            if not self.blocks or self.fill == self.blocks[-1].shape[0]:
                capacity = max(1, BLOCK_BYTES // (rows.shape[1] * rows.element_size()))
                self.blocks.append(torch.empty(capacity, rows.shape[1], dtype=rows.dtype, device=rows.device))
                self.fill = 0
            block = self.blocks[-1]
            take = min(block.shape[0] - self.fill, rows.shape[0] - start)
            block[self.fill : self.fill + take] = rows[start : start + take]
            self.fill, start, self.num_rows = self.fill + take, start + take, self.num_rows + take

    def concat(self) -> torch.Tensor:
        """All rows (N, C); the blocks are released."""
        first = self.blocks[0]
        out = torch.empty(self.num_rows, first.shape[1], dtype=first.dtype, device=first.device)
        del first
        self.blocks.reverse()
        start = 0
        while self.blocks:
            block = self.blocks.pop()
            take = min(block.shape[0], self.num_rows - start)
            out[start : start + take] = block[:take]
            start += take
            del block
        self.fill = self.num_rows = 0
        return out


class MemoryBank(nn.Module):
    """Patch memory bank of one stream, a module whose state is two buffers.

    Buffers (in ``state_dict`` once finalized): ``bank`` ``(M, C)`` standardised coreset rows,
    ``standardisation`` ``(2,)`` float64, its mean and std. ``.to(device)`` moves them;
    the search index is rebuilt on the new device when next needed.

    Args:
        config: Coreset, search back-end, standardisation and re-weighting settings.
        device: Where the bank is collected, lives and is searched.
    """

    bank: torch.Tensor | None
    standardisation: torch.Tensor | None
    split: int | None = None
    """One view: images and maps are scored with all channels (:class:`SplitBank` has two)."""

    def __init__(self, config: MemoryConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        self._parts = _RowBlocks()
        self._collected: torch.Tensor | None = None
        self.register_buffer("bank", None)
        self.register_buffer("standardisation", None)
        self._index: KnnIndex | None = None

    @classmethod
    def empty(cls, config: MemoryConfig, rows: int, dim: int, device: torch.device | str = "cpu") -> MemoryBank:
        """A finalized-shaped bank of ``rows x dim`` zeros, to be filled by ``load_state_dict``."""
        bank = cls(config, device)
        bank.bank = torch.zeros(rows, dim, device=bank.device)
        bank.standardisation = torch.tensor([0.0, 1.0], dtype=torch.float64, device=bank.device)
        return bank

    @property
    def mean(self) -> float | None:
        """Standardisation mean (None before ``finalize``)."""
        return None if self.standardisation is None else float(self.standardisation[0])

    @property
    def std(self) -> float | None:
        """Standardisation std (None before ``finalize``)."""
        return None if self.standardisation is None else float(self.standardisation[1])

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        out = super()._apply(fn, recurse)
        if self.bank is not None:
            self.device = self.bank.device
        self._index = None  # built again, on the buffers' device, by the next search
        return out

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - nn.Module's hook
        super()._load_from_state_dict(*args, **kwargs)
        self._index = None

    @property
    def index(self) -> KnnIndex:
        """The search index over ``bank`` (built on first use)."""
        if self.bank is None:
            raise RuntimeError("the bank is not finalized")
        if self._index is None:
            self._build_index()
        return self._index

    @property
    def shape(self) -> list[int]:
        """``[rows, dim]`` of the finalized bank (what a saved detector records to rebuild it)."""
        if self.bank is None:
            raise RuntimeError("the bank is not finalized")
        return [int(v) for v in self.bank.shape]

    @property
    def num_rows(self) -> int:
        """Rows kept by the coreset."""
        return self.shape[0]

    @property
    def dim(self) -> int | None:
        """Feature dimension C, once known."""
        source = self.bank if self.bank is not None else self._collected
        if source is not None:
            return int(source.shape[1])
        return self._parts.dim

    def add(self, pf: PatchFeatures) -> None:
        """Append the valid patches of a batch ((B, C, h, w) features) as (n, C) rows.

        With ``keep_invalid_patches`` (reference parity) every patch is added, invalid ones as
        zero vectors, as the reference's banks hold them; scoring still gives invalid patches 0.
        """
        if self.bank is not None:
            raise RuntimeError("the bank is finalized; create a new MemoryBank to add patches")
        feats = pf.features.permute(0, 2, 3, 1)
        if self.config.keep_invalid_patches:
            rows = (feats * pf.valid.unsqueeze(-1)).reshape(-1, feats.shape[-1])
        else:
            rows = feats[pf.valid]
        rows = rows.detach().float().to(self.device)
        if self.dim is not None and rows.shape[1] != self.dim:
            raise ValueError(f"patch features have {rows.shape[1]} channels, the bank has {self.dim}")
        self._parts.append(rows)  # copied into a block: the batch's features are not kept alive

    def _gather(self) -> torch.Tensor:
        """The collected rows (N, C), concatenated once."""
        if self._collected is None:
            if self._parts.num_rows == 0:
                raise ValueError("the memory bank has no valid patches; add() training features first")
            self._collected = self._parts.concat()
        return self._collected

    def collected_stats(self) -> tuple[float, float]:
        """Scalar mean and unbiased std over all entries of the collected (raw) bank.

        The pipeline uses these for M3DM's mixed standardisation (PC mean, RGB std, §3.1).
        """
        std, mean = torch.std_mean(self._gather())
        return float(mean), float(std)

    def finalize(
        self,
        mean: float | None = None,
        std: float | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Standardise, subsample with the configured coreset, and build the search index.

        Args:
            mean: Standardisation mean; None uses this bank's own (``per_bank``).
            std: Standardisation std; None uses this bank's own.
            progress: Optional ``progress("coreset", picked, kept)``: once at 0 before the
                sampler starts, about 50 times while a greedy sampler picks, and once at the end.
        """
        rows = self._gather()
        own_mean, own_std = self.collected_stats() if mean is None or std is None else (0.0, 1.0)
        mean, std = float(own_mean if mean is None else mean), float(own_std if std is None else std)
        if not std > 0:
            raise ValueError(f"standardisation std must be > 0, got {std}")
        self.standardisation = torch.tensor([mean, std], dtype=torch.float64, device=self.device)
        rows.sub_(mean).div_(std)  # in place: the raw rows are not needed again
        idx = self._select(rows, progress)
        self.bank = rows if len(idx) == rows.shape[0] else rows[idx].contiguous()
        self._collected = None
        logger.info("memory bank: kept %d of %d patches", self.bank.shape[0], rows.shape[0])
        self._build_index()

    def _select(self, rows: torch.Tensor, progress: Callable[[str, int, int], None] | None) -> torch.Tensor:
        """The configured sampler's indices, reporting progress under the stage ``coreset``."""
        sampler = build_sampler(self.config.coreset)
        if progress is None:
            return sampler.select(rows)
        last = [0]

        def report(done: int, total: int) -> None:
            last[0] = done
            progress("coreset", done, total)

        report(0, coreset_size(self.config.coreset.ratio, rows.shape[0]))
        idx = sampler.select(rows, report)
        if last[0] != len(idx):
            report(len(idx), len(idx))
        return idx

    def _build_index(self) -> None:
        cfg = self.config
        kind = cfg.faiss_index if cfg.knn_backend == "faiss" else "flat"
        self._index = KnnIndex(
            self.bank, backend=cfg.knn_backend, index=kind, chunk_size=cfg.chunk_size, seed=cfg.coreset.seed
        )

    @property
    def stats(self) -> tuple[float, float]:
        """The ``(mean, std)`` the bank was standardised with."""
        if self.mean is None or self.std is None:
            raise RuntimeError("the bank is not finalized")
        return self.mean, self.std

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std`` with the bank's scalar constants."""
        mean, std = self.stats
        return (x - mean) / std

    def score(self, pf: PatchFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and patch scores of a batch against the bank.

        Args:
            pf: Features ``(B, C, h, w)`` and validity ``(B, h, w)``.

        Returns:
            ``image_score`` (B,) (re-weighted max over valid patches; 0 without valid patches)
            and ``patch_scores`` (B, h, w): NN distance of each valid patch, 0 where invalid.
        """
        pf = pf.to(self.device)
        rows, dist, nn, patch = self._nearest(pf)
        image = torch.zeros(pf.valid.shape[0], device=self.device)
        if rows.shape[0] == 0:
            return image, patch
        has_valid = pf.valid.flatten(1).any(dim=1)
        image[has_valid] = self._image_scores(rows, dist, nn, pf.valid)[has_valid]
        return image, patch

    def patch_scores(self, pf: PatchFeatures) -> torch.Tensor:
        """Patch scores ``(B, h, w)`` alone, as :meth:`score` gives them: one search, no image score."""
        return self._nearest(pf.to(self.device))[3]

    def _nearest(self, pf: PatchFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised valid rows, their NN distances and bank rows, and the patch map (0 where invalid)."""
        index = self.index
        rows = self.standardize(pf.features.permute(0, 2, 3, 1)[pf.valid].float())
        patch = torch.zeros(pf.valid.shape, device=self.device)
        if rows.shape[0] == 0:
            empty = torch.zeros(0, device=self.device)
            return rows, empty, empty.long(), patch
        dist, nn = index.search(rows, 1)
        patch[pf.valid] = dist[:, 0]
        return rows, dist[:, 0], nn[:, 0], patch

    def _image_scores(
        self, rows: torch.Tensor, dist: torch.Tensor, nn: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Re-weighted image scores (B,) from the valid rows' NN distances (§3.3 step 2)."""
        flat = torch.full(valid.shape, -1.0, device=self.device)
        flat[valid] = dist
        flat = flat.flatten(1)
        s_star, where = flat.max(dim=1)
        row_of = torch.cumsum(valid.flatten(1).flatten(), 0).view_as(flat) - 1
        star_rows = row_of.gather(1, where[:, None])[:, 0].clamp_min(0)
        k = min(3, self.bank.shape[0])
        if not self.config.reweight or k < 2:
            return s_star.clamp_min(0)
        _, neigh = self.index.search(self.bank[nn[star_rows]], k)
        neigh = neigh[:, 1:]  # b* itself comes first; drop it
        diff = rows[star_rows][:, None, :] - self.bank[neigh.clamp_min(0)]
        d_neigh = torch.linalg.vector_norm(diff, dim=-1)
        return reweighted_image_score(s_star.clamp_min(0), d_neigh, self.bank.shape[1])

    def extra_repr(self) -> str:
        return "not finalized" if self.bank is None else f"{self.bank.shape[0]} x {self.bank.shape[1]}"


class SplitBank(nn.Module):
    """A bank over features with two views: image scores from one, anomaly maps from the other.

    For features whose channels ``[:split]`` rank whole images best and channels ``[split:]``
    localise best (the EfficientNet-Lite ``split`` aggregation: ``upsample_first`` then
    ``per_stage``, docs/method.md "RGB patch aggregation"). Each view has its own
    :class:`MemoryBank` (coreset, standardisation, index): ``image`` and ``map``, so the state
    is ``image.bank``, ``image.standardisation``, ``map.bank``, ``map.standardisation``. The
    interface is :class:`MemoryBank`'s; scoring searches each bank once, and the map view's bank
    computes no image score.

    Args:
        config: Settings of both banks.
        split: First channel of the map view.
        device: Where the banks are collected, live and are searched.
    """

    def __init__(self, config: MemoryConfig, split: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if split < 1:
            raise ValueError(f"split must be >= 1, got {split}")
        self.config = config
        self.split = int(split)
        self.image = MemoryBank(config, device)
        self.map = MemoryBank(config, device)

    @classmethod
    def empty(cls, config: MemoryConfig, shapes: dict[str, list[int]], device: torch.device | str = "cpu") -> SplitBank:
        """Finalized-shaped banks per view (``shapes`` as :attr:`shape` gives), filled by ``load_state_dict``."""
        bank = cls(config, shapes["image"][1], device)
        bank.image = MemoryBank.empty(config, *shapes["image"], device)
        bank.map = MemoryBank.empty(config, *shapes["map"], device)
        return bank

    def views(self, pf: PatchFeatures) -> tuple[tuple[MemoryBank, PatchFeatures], tuple[MemoryBank, PatchFeatures]]:
        """Each view's bank with the features it takes: ``(image bank, image view), (map bank, map view)``."""
        map_view = PatchFeatures(pf.features[:, self.split :], pf.valid)
        return (self.image, image_view(pf, self.split)), (self.map, map_view)

    @property
    def shape(self) -> dict[str, list[int]]:
        """``{"image": [rows, dim], "map": [rows, dim]}``."""
        return {"image": self.image.shape, "map": self.map.shape}

    @property
    def num_rows(self) -> int:
        """Rows kept by both coresets together."""
        return self.image.num_rows + self.map.num_rows

    @property
    def dim(self) -> int | None:
        """Channels of the features this bank scores (both views), once known."""
        dims = (self.image.dim, self.map.dim)
        return None if None in dims else dims[0] + dims[1]

    def add(self, pf: PatchFeatures) -> None:
        """Append each view's valid patches to its bank."""
        for bank, view in self.views(pf):
            bank.add(view)

    def finalize(
        self,
        mean: float | None = None,
        std: float | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Finalize both banks (:meth:`MemoryBank.finalize`; ``progress`` sees two coreset stages)."""
        self.image.finalize(mean, std, progress)
        self.map.finalize(mean, std, progress)

    def score(self, pf: PatchFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(B,)`` from the image view's bank, patch scores ``(B, h, w)`` from the map view's."""
        (image_bank, image_feats), (map_bank, map_feats) = self.views(pf)
        image, _ = image_bank.score(image_feats)
        return image, map_bank.patch_scores(map_feats)

    def extra_repr(self) -> str:
        return f"split at channel {self.split}"


def new_bank(config: MemoryConfig, split: int | None, device: torch.device | str = "cpu") -> MemoryBank | SplitBank:
    """An empty bank for features whose map view starts at channel ``split`` (None: one view)."""
    return MemoryBank(config, device) if split is None else SplitBank(config, split, device)


def empty_bank(config: MemoryConfig, shape: list[int] | dict[str, list[int]],
               device: torch.device | str = "cpu") -> MemoryBank | SplitBank:
    """A finalized-shaped bank of the ``shape`` that :attr:`MemoryBank.shape` / :attr:`SplitBank.shape` gave."""
    if isinstance(shape, dict):
        return SplitBank.empty(config, shape, device)
    return MemoryBank.empty(config, *shape, device=device)
