"""Reading samples and encoding them into model inputs and patch features, once per sample.

The :class:`Encoder` is shared by every detector of an experiment so that features are computed
once per extractor configuration (through :class:`~cmdiad.features.cache.FeatureCache`), and it
only ever opens the files of the modality it is asked for (true few-modal inference).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import torch

from cmdiad.config import DataConfig, PointFeatureConfig, RGBFeatureConfig
from cmdiad.features.base import FeatureExtractor
from cmdiad.features.cache import FeatureCache, extractor_key
from cmdiad.io.mvtec3d import load_sample
from cmdiad.preprocessing.image import resize_mask
from cmdiad.types import PatchFeatures, SampleRecord

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; the CLI turns it into progress bars."""


def _file_identity(record: SampleRecord, modality: str) -> str:
    path = record.path_of(modality)
    if path is None:
        raise ValueError(f"{record.key} has no {modality} file")
    st = path.stat()
    raw = f"{record.key}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class Encoder:
    """Turns sample records into preprocessed inputs and patch features.

    Args:
        extractors: Extractor per modality (``"rgb"``, ``"xyz"``); only those needed are used.
        configs: The config each extractor was built from (part of the cache key).
        data: Input size and loading options.
        cache: Feature cache; an in-memory one when omitted.
        batch_size: Samples per extractor call.
    """

    def __init__(
        self,
        extractors: dict[str, FeatureExtractor],
        configs: dict[str, RGBFeatureConfig | PointFeatureConfig],
        data: DataConfig,
        *,
        cache: FeatureCache | None = None,
        batch_size: int = 8,
    ) -> None:
        self.extractors = extractors
        self.configs = configs
        self.data = data
        self.cache = cache if cache is not None else FeatureCache(None)
        self.batch_size = batch_size
        self.ms_per_sample: dict[str, float] = {}
        self._keys = {m: extractor_key(c, data.image_size) for m, c in configs.items()}

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
        """Preprocessed inputs ``(N, 3, H, W)`` of ``modality``, read from disk."""
        ext = self.extractor(modality)
        arrays = [getattr(load_sample(r, (modality,)), modality) for r in records]
        if not arrays:
            return torch.empty(0, 3, *self.image_size)
        return torch.stack([ext.preprocess(a, self.image_size) for a in arrays])

    def masks(self, records: Sequence[SampleRecord]) -> torch.Tensor:
        """Ground-truth masks ``(N, H, W)`` bool at the model input size."""
        out = []
        for r in records:
            modality = sorted(r.modalities)[0]
            sample = load_sample(r, (modality,))
            out.append(resize_mask(sample.mask, self.image_size))
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
            Features ``(N, C, h, w)`` and validity ``(N, h, w)`` on the CPU.
        """
        ekey = self._keys[modality]
        skeys = [_file_identity(r, modality) for r in records]
        found: dict[int, PatchFeatures] = {}
        for i, sk in enumerate(skeys):
            hit = self.cache.get(ekey, sk)
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
                self.cache.put(ekey, skeys[i], pf)
                found[i] = pf
            done += len(chunk)
            if progress is not None:
                progress(f"{modality} features", done, len(records))
        if not records:
            raise ValueError(f"no samples to encode for {modality}")
        feats = torch.cat([found[i].features for i in range(len(records))])
        valid = torch.cat([found[i].valid for i in range(len(records))])
        return PatchFeatures(feats, valid)

    def measure(self, records: Sequence[SampleRecord], modality: str) -> float:
        """Milliseconds per sample to read and encode ``records``, bypassing the cache.

        Used when every feature came from an on-disk cache, so that reported times still
        include extraction.
        """
        self._compute(records, modality, None)
        return self.ms_per_sample[modality]

    def _compute(self, records: Sequence[SampleRecord], modality: str, x: torch.Tensor | None) -> PatchFeatures:
        ext = self.extractor(modality)
        t0 = time.perf_counter()
        x = (self.inputs(records, modality) if x is None else x).to(ext.device)
        with torch.no_grad():
            pf = ext.patch_features(x)
        ms = 1000 * (time.perf_counter() - t0) / max(len(records), 1)
        prev = self.ms_per_sample.get(modality)
        self.ms_per_sample[modality] = ms if prev is None else 0.5 * (prev + ms)
        return pf.to("cpu")
