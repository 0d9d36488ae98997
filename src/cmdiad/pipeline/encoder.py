"""Reading samples and encoding them into model inputs and patch features, once per sample.

The :class:`Encoder` is shared by every detector of an experiment so that features are computed
once per extractor configuration (through :class:`~cmdiad.features.cache.FeatureCache`), and it
only ever opens the files of the modality it is asked for (true few-modal inference).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from cmdiad.config import DataConfig, PointFeatureConfig, RGBFeatureConfig
from cmdiad.errors import DatasetError
from cmdiad.features.base import FeatureExtractor
from cmdiad.features.cache import FeatureCache, extractor_key
from cmdiad.io.mvtec3d import load_sample
from cmdiad.preprocessing.image import resize_mask
from cmdiad.types import PatchFeatures, SampleRecord

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; the CLI turns it into progress bars.

The contract every long stage follows: ``stage`` is a short human-readable name that stays the
same for the whole stage (e.g. ``"xyz features"``, ``"coreset xyz"``, ``"score"``); ``done``
counts finished units out of ``total`` (samples, coreset picks, epochs), is non-decreasing
within a stage, and the last call of a stage has ``done == total``. A stage restarted with
``done`` back at 0 starts a new bar. Callers throttle calls to a few per second at most.
"""


def staged(progress: Progress | None, stage: str) -> Progress | None:
    """``progress`` reporting under ``stage`` whatever name the caller gives (``None`` stays ``None``).

    For library code that reports a generic stage (e.g. ``coreset``) which the caller wants to
    name (``coreset xyz``).
    """
    if progress is None:
        return None
    return lambda _stage, done, total: progress(stage, done, total)


def throttled(progress: Progress | None, min_interval: float = 0.2) -> Progress | None:
    """``progress`` passing at most one call per ``min_interval`` s per stage, plus every final call.

    For tight loops (a greedy coreset picks thousands of rows): a stage's first call and its
    ``done == total`` call always pass, so bars open at once and always close.
    """
    if progress is None:
        return None
    last: dict[str, float] = {}

    def call(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done >= total or stage not in last or now - last[stage] >= min_interval:
            last[stage] = now
            progress(stage, done, total)

    return call


def default_read_workers() -> int:
    """Threads that read and preprocess files: PIL decoding and resizing release the GIL."""
    return max(1, min(4, os.cpu_count() or 1))


def _native_size(record: SampleRecord) -> tuple[int, int] | None:
    """``(H, W)`` of the sample's rgb or xyz file from its header only (no pixel is decoded)."""
    if record.rgb_path is not None:
        from PIL import Image

        try:
            with Image.open(record.rgb_path) as img:
                return img.size[1], img.size[0]
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(record.rgb_path, f"unreadable image header ({err})") from err
    if record.xyz_path is not None:
        import tifffile

        try:
            with tifffile.TiffFile(record.xyz_path) as tif:
                shape = tif.series[0].shape
            return int(shape[0]), int(shape[1])
        except Exception as err:  # noqa: BLE001 - tifffile raises many types
            raise DatasetError(record.xyz_path, f"unreadable TIFF header ({err})") from err
    return None


def _file_identity(record: SampleRecord, modality: str) -> str:
    path = record.path_of(modality)
    if path is None:
        raise ValueError(f"{record.key} has no {modality} file")
    st = path.stat()
    raw = f"{record.key}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _assemble(parts: Sequence[PatchFeatures]) -> PatchFeatures:
    """One float32 ``(N, C, h, w)`` tensor (and validity) from per-sample parts of any float dtype."""
    first = parts[0].features
    n = sum(p.features.shape[0] for p in parts)
    feats = torch.empty(n, *first.shape[1:], dtype=torch.float32)
    valid = torch.empty(n, *parts[0].valid.shape[1:], dtype=torch.bool)
    start = 0
    for p in parts:
        stop = start + p.features.shape[0]
        feats[start:stop].copy_(p.features)
        valid[start:stop].copy_(p.valid)
        start = stop
    return PatchFeatures(feats, valid)


class Encoder:
    """Turns sample records into preprocessed inputs and patch features.

    Args:
        extractors: Extractor per modality (``"rgb"``, ``"xyz"``); only those needed are used.
        configs: The config each extractor was built from (part of the cache key).
        data: Input size, loading options and the dtype features are kept in (``feature_dtype``).
        cache: Feature cache; an in-memory one when omitted.
        batch_size: Samples per extractor call.
        read_workers: Threads reading and preprocessing the files of a batch (results are the
            same for any number; :func:`default_read_workers` when omitted).
        keep_inputs: Keep preprocessed inputs (float32, in ``cache``'s folder or in memory) so
            rows that need them (i2f, f2i) and later runs never decode a file twice; about
            0.6 MB per sample and modality at 224x224. Off for long-running servers.
    """

    def __init__(
        self,
        extractors: dict[str, FeatureExtractor],
        configs: dict[str, RGBFeatureConfig | PointFeatureConfig],
        data: DataConfig,
        *,
        cache: FeatureCache | None = None,
        batch_size: int = 8,
        read_workers: int | None = None,
        keep_inputs: bool = True,
    ) -> None:
        self.extractors = extractors
        self.configs = configs
        self.data = data
        self.cache = cache if cache is not None else FeatureCache(None)
        self.batch_size = batch_size
        self.read_workers = default_read_workers() if read_workers is None else max(1, int(read_workers))
        self.ms_per_sample: dict[str, float] = {}
        self.feature_dtype = getattr(torch, data.feature_dtype)
        self._store_dtype = None if self.feature_dtype == torch.float32 else self.feature_dtype  # None: the cache's
        suffix = "" if self.feature_dtype == torch.float32 else f"-{data.feature_dtype}"  # float32 keys unchanged
        self._keys = {m: extractor_key(c, data.image_size) + suffix for m, c in configs.items()}
        # Preprocessed inputs are kept too (float32, exact), so that rows needing them (i2f, f2i)
        # and later runs on the same cache never decode a file twice.
        self._input_cache = FeatureCache(self.cache.root) if keep_inputs else None

    @property
    def keep_inputs(self) -> bool:
        """Whether preprocessed inputs are kept; setting False drops those kept so far (e.g. in a service)."""
        return self._input_cache is not None

    @keep_inputs.setter
    def keep_inputs(self, keep: bool) -> None:
        if not keep:
            self._input_cache = None
        elif self._input_cache is None:
            self._input_cache = FeatureCache(self.cache.root)

    @property
    def image_size(self) -> tuple[int, int]:
        """Model input size ``(H, W)``."""
        return tuple(self.data.image_size)  # type: ignore[return-value]

    def extractor(self, modality: str) -> FeatureExtractor:
        """The extractor of ``modality``; a clear error when none was configured."""
        if modality not in self.extractors:
            raise KeyError(f"no {modality} extractor configured")
        return self.extractors[modality]

    def inputs(self, records: Sequence[SampleRecord], modality: str) -> torch.Tensor:
        """Preprocessed inputs ``(N, 3, H, W)`` of ``modality``: read from disk once, then cached."""
        ext = self.extractor(modality)
        if not records:
            return torch.empty(0, 3, *self.image_size)

        def one(i: int) -> torch.Tensor:
            return ext.preprocess(getattr(load_sample(records[i], (modality,)), modality), self.image_size)

        kept = self._input_cache
        if kept is None:
            return torch.stack(self._map(one, range(len(records))))
        ikey = f"{self._keys[modality]}-inputs"
        skeys = [_file_identity(r, modality) for r in records]
        found = [kept.get(ikey, sk) for sk in skeys]
        missing = [i for i, pf in enumerate(found) if pf is None]
        for i, x in zip(missing, self._map(one, missing), strict=True):
            valid = torch.ones(1, *x.shape[-2:], dtype=torch.bool)
            found[i] = kept.put(ikey, skeys[i], PatchFeatures(x[None], valid))
        return torch.cat([pf.features for pf in found])

    def _map(self, fn: Callable, items: Sequence) -> list:
        """``[fn(x) for x in items]``, over :attr:`read_workers` threads, in order."""
        if self.read_workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.read_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    def masks(self, records: Sequence[SampleRecord]) -> torch.Tensor:
        """Ground-truth masks ``(N, H, W)`` bool at the model input size.

        Only the mask files are decoded (an absent mask is all False); the sample's size is
        checked against the rgb or xyz file's header, so no image or point cloud is read.

        Raises:
            DatasetError: A mask is unreadable or its size differs from the sample's.
        """

        def one(r: SampleRecord) -> torch.Tensor:
            if r.gt_path is None:
                return torch.zeros(*self.image_size, dtype=torch.bool)
            mask = load_sample(r, ()).mask
            size = _native_size(r)
            if size is not None and tuple(mask.shape) != size:
                raise DatasetError(r.gt_path, f"mask size {tuple(mask.shape)} differs from the sample's size {size}")
            return resize_mask(mask, self.image_size)

        out = self._map(one, records)
        return torch.stack(out) if out else torch.zeros(0, *self.image_size, dtype=torch.bool)

    def encode(self, records: Sequence[SampleRecord], modality: str) -> tuple[torch.Tensor, PatchFeatures]:
        """Inputs ``(N, 3, H, W)`` and patch features, reading each file once."""
        x = self.inputs(records, modality)
        return x, self.features(records, modality, inputs=x)

    def features(
        self,
        records: Sequence[SampleRecord],
        modality: str,
        progress: Progress | None = None,
        *,
        inputs: torch.Tensor | None = None,
    ) -> PatchFeatures:
        """Patch features of ``modality`` for every record, from the cache where possible.

        Args:
            records: Samples that have ``modality``.
            modality: ``rgb`` or ``xyz``.
            progress: Optional ``progress(stage, done, total)``.
            inputs: Their inputs ``(N, 3, H, W)`` when already read, so cache misses do not
                read the files again.

        Returns:
            Features ``(N, C, h, w)`` float32 and validity ``(N, h, w)`` on the CPU (features kept
            in ``data.feature_dtype`` are converted into one preallocated float32 tensor, so no
            per-sample float32 copies are held).
        """
        return _assemble(self._per_sample(records, modality, progress, inputs))

    def prepare(self, records: Sequence[SampleRecord], modality: str, progress: Progress | None = None) -> None:
        """Compute and cache the features of ``records`` that the cache lacks, without assembling them.

        A caller that then takes the features a few samples at a time (a bank fed in chunks) never
        holds a second copy of the whole set.
        """
        self._per_sample(records, modality, progress, None)

    def _per_sample(self, records, modality, progress, inputs) -> list[PatchFeatures]:
        """Per-sample features as stored (cache hits, then the misses computed batch by batch)."""
        if not records:
            raise ValueError(f"no samples to encode for {modality}")
        ekey = self._keys[modality]
        skeys = [_file_identity(r, modality) for r in records]
        found: dict[int, PatchFeatures] = {}
        for i, sk in enumerate(skeys):
            hit = self.cache.get(ekey, sk, as_stored=True)
            if hit is not None:
                found[i] = hit
        missing = [i for i in range(len(records)) if i not in found]
        done = len(found)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            given = inputs[chunk] if inputs is not None else None
            computed = self._compute([records[i] for i in chunk], modality, given)
            for j, i in enumerate(chunk):
                pf = PatchFeatures(computed.features[j : j + 1], computed.valid[j : j + 1])
                # as stored: the same values on a later run
                found[i] = self._kept(self.cache.put(ekey, skeys[i], pf, dtype=self._store_dtype, as_stored=True))
            done += len(chunk)
            if progress is not None:
                progress(f"{modality} features", done, len(records))
        if missing:
            log.info("%s features: %d computed, %d from the cache", modality, len(missing), len(records) - len(missing))
        elif modality not in self.ms_per_sample and (ms := self.cache.get_timing(ekey)) is not None:
            self.ms_per_sample[modality] = ms  # what extraction cost when the cache was filled
        return [found[i] for i in range(len(records))]

    def _kept(self, pf: PatchFeatures) -> PatchFeatures:
        """``pf`` in the feature dtype, also from a cache that stores nothing (the values a stored entry has)."""
        if self._store_dtype is None or pf.features.dtype == self._store_dtype:
            return pf
        return PatchFeatures(pf.features.to(self._store_dtype), pf.valid)

    def measure(self, records: Sequence[SampleRecord], modality: str) -> float:
        """Milliseconds per sample to read and encode ``records``, bypassing the cache.

        Used when every feature came from an on-disk cache, so that reported times still
        include extraction. The figure stored when the cache was filled is used when there is
        one, so a fully cached run decodes no file.
        """
        stored = self.cache.get_timing(self._keys[modality])
        if stored is not None:
            self.ms_per_sample[modality] = stored
            return stored
        self._compute(records, modality, None)
        return self.ms_per_sample[modality]

    def _compute(self, records: Sequence[SampleRecord], modality: str, x: torch.Tensor | None) -> PatchFeatures:
        ext = self.extractor(modality)
        t0 = time.perf_counter()
        x_given = x
        x = (self.inputs(records, modality) if x is None else x).to(ext.device)
        with torch.no_grad():
            pf = ext.patch_features(x)
        ms = 1000 * (time.perf_counter() - t0) / max(len(records), 1)
        prev = self.ms_per_sample.get(modality)
        self.ms_per_sample[modality] = ms if prev is None else 0.5 * (prev + ms)
        if x_given is None:  # a full read + encode: what a cached run reports
            self.cache.put_timing(self._keys[modality], self.ms_per_sample[modality])
        return pf.to("cpu")
