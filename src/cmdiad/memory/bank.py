"""One modality's memory bank: collect, standardise, subsample, search, save/load (§3.1-3.3).

Patch scores of *invalid* patches (``PatchFeatures.valid`` False, e.g. no 3D points under the
patch) are 0: such a patch carries no data in this modality, so it cannot be judged anomalous
here; the other modality's stream covers it. Invalid patches are never added to the bank, and
the image score only looks at valid patches.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cmdiad.config import MemoryConfig, from_dict, to_dict
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.memory.coreset import build_sampler, coreset_size
from cmdiad.memory.knn import KnnIndex
from cmdiad.types import PatchFeatures

logger = logging.getLogger(__name__)

FORMAT = "cmdiad.memory_bank"
FORMAT_VERSION = 1
TENSORS_FILE = "bank.safetensors"
META_FILE = "bank.json"
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


class MemoryBank:
    """Patch memory bank of one stream.

    Args:
        config: Coreset, search back-end, standardisation and re-weighting settings.
        device: Where the bank lives and is searched.
    """

    def __init__(self, config: MemoryConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self._parts = _RowBlocks()
        self._collected: torch.Tensor | None = None
        self.bank: torch.Tensor | None = None
        self.mean: float | None = None
        self.std: float | None = None
        self._index: KnnIndex | None = None

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
        self.mean = float(own_mean if mean is None else mean)
        self.std = float(own_std if std is None else std)
        if not self.std > 0:
            raise ValueError(f"standardisation std must be > 0, got {self.std}")
        rows.sub_(self.mean).div_(self.std)  # in place: the raw rows are not needed again
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
        if self._index is None or self.bank is None:
            raise RuntimeError("the bank is not finalized")
        pf = pf.to(self.device)
        rows = self.standardize(pf.features.permute(0, 2, 3, 1)[pf.valid].float())
        patch = torch.zeros(pf.valid.shape, device=self.device)
        image = torch.zeros(pf.valid.shape[0], device=self.device)
        if rows.shape[0] == 0:
            return image, patch
        dist, nn = self._index.search(rows, 1)
        patch[pf.valid] = dist[:, 0]
        has_valid = pf.valid.flatten(1).any(dim=1)
        image[has_valid] = self._image_scores(rows, dist[:, 0], nn[:, 0], pf.valid)[has_valid]
        return image, patch

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
        _, neigh = self._index.search(self.bank[nn[star_rows]], k)
        neigh = neigh[:, 1:]  # b* itself comes first; drop it
        diff = rows[star_rows][:, None, :] - self.bank[neigh.clamp_min(0)]
        d_neigh = torch.linalg.vector_norm(diff, dim=-1)
        return reweighted_image_score(s_star.clamp_min(0), d_neigh, self.bank.shape[1])

    def save(self, directory: Path | str) -> None:
        """Write ``bank.safetensors`` (bank rows, mean, std) and ``bank.json`` (format, config)."""
        mean, std = self.stats
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"bank": self.bank.detach().cpu().contiguous(), "stats": torch.tensor([mean, std])}
        save_file(tensors, str(out / TENSORS_FILE))
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "config": to_dict(self.config),
            "mean": mean, "std": std, "num_entries": int(self.bank.shape[0]), "dim": int(self.bank.shape[1]),
        }  # fmt: skip
        (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path | str, device: torch.device | str = "cpu") -> MemoryBank:
        """Read a bank written by :meth:`save`; a missing/corrupt/foreign file raises ModelFileError."""
        meta = _read_meta(Path(directory) / META_FILE)
        try:
            config = from_dict(MemoryConfig, meta["config"], "memory bank config")
        except ConfigError as exc:
            raise ModelFileError(Path(directory) / META_FILE, str(exc)) from exc
        bank = cls(config, device)
        tensors = _read_tensors(Path(directory) / TENSORS_FILE, meta)
        bank.bank = tensors["bank"].to(bank.device)
        bank.mean, bank.std = float(meta["mean"]), float(meta["std"])
        bank._build_index()
        return bank


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFileError(path, "missing memory-bank metadata file") from exc
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"unreadable or not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, f"not a cmdiad memory bank (format is not {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(path, f"format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    missing = {"config", "mean", "std", "num_entries", "dim"} - set(meta)
    if missing:
        raise ModelFileError(path, f"missing key(s) {', '.join(sorted(missing))}")
    return meta


def _read_tensors(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(path, "missing memory-bank tensor file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"corrupt safetensors file ({exc})") from exc
    bank = tensors.get("bank")
    expected = (meta["num_entries"], meta["dim"])
    if bank is None or bank.ndim != 2 or tuple(bank.shape) != tuple(expected):
        got = None if bank is None else tuple(bank.shape)
        raise ModelFileError(path, f"bank tensor shape {got} does not match the metadata {expected}")
    return tensors
