"""Mixed inference: route each sample to the detector that matches the modalities it has.

A model *set* holds a dual detector for samples with both modalities and MTFI detectors with
xyz and with rgb as main modality for samples that have only one (issue: mixed inference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cmdiad.errors import DatasetError, ModelFileError
from cmdiad.features.cache import FeatureCache
from cmdiad.io.atomic import atomic_write_text
from cmdiad.io.meta import read_json_object
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import load_detector, write_detector_files, write_model_folder
from cmdiad.types import SampleRecord, Scores

log = logging.getLogger(__name__)

ROUTER_FORMAT = "cmdiad-router"
ROUTE_NAMES = {frozenset({"rgb", "xyz"}): "both", frozenset({"xyz"}): "xyz", frozenset({"rgb"}): "rgb"}


class Router:
    """Detectors keyed by the modality set they serve (``both``, ``xyz``, ``rgb``).

    A sample with both modalities goes to ``both`` when present, else to an available
    single-modality detector; a sample with one modality goes to the detector for it.
    """

    def __init__(self, detectors: dict[str, Detector]) -> None:
        unknown = set(detectors) - set(ROUTE_NAMES.values())
        if unknown:
            raise ValueError(f"unknown routes {sorted(unknown)}")
        self.detectors = detectors

    def route(self, record: SampleRecord) -> str | None:
        """The route name for ``record``, or None when no detector can score it."""
        name = ROUTE_NAMES.get(record.modalities)
        if name in self.detectors:
            return name
        if name == "both":
            for alt in ("xyz", "rgb"):
                if alt in self.detectors:
                    return alt
        return None

    def score(
        self,
        records: Sequence[SampleRecord],
        *,
        on_error: Callable[[int, DatasetError], None] | None = None,
    ) -> list[tuple[str | None, Scores | None, int]]:
        """Score every record with its route.

        Args:
            records: Samples to score.
            on_error: Called with ``(index, error)`` for each sample whose files cannot be read;
                the other samples are still scored. Without it the first bad file raises.

        Returns:
            One ``(route, scores, index)`` per record: ``scores`` holds that single sample
            (batch 1), both are None when no detector fits the sample or it failed.
        """
        groups: dict[str, list[int]] = {}
        out: list[tuple[str | None, Scores | None, int]] = [(None, None, i) for i in range(len(records))]
        for i, r in enumerate(records):
            name = self.route(r)
            if name is None:
                log.warning("%s: no detector for a sample with %s", r.rgb_path or r.xyz_path, sorted(r.modalities))
                continue
            groups.setdefault(name, []).append(i)
        for name, idx in groups.items():
            for i, one in self._score_group(name, records, idx, on_error):
                out[i] = (name, one, i)
        return out

    def _score_group(self, name, records, idx, on_error) -> list[tuple[int, Scores]]:
        """Scores of ``records[idx]`` on route ``name``; with ``on_error``, one by one after a failure."""
        try:
            scores = self.detectors[name].score([records[i] for i in idx])
        except DatasetError as exc:
            if on_error is None:
                raise
            if len(idx) == 1:
                on_error(idx[0], exc)
                return []
            return [pair for i in idx for pair in self._score_group(name, records, [i], on_error)]
        return [(i, _one(scores, j)) for j, i in enumerate(idx)]

    def save(self, out: Path) -> Path:
        """Write every detector to ``out/<route>/`` and ``out/router.json``, replacing ``out`` whole."""

        def write(folder: Path) -> None:
            for name, det in self.detectors.items():
                write_detector_files(det, folder / name)
            atomic_write_text(folder / "router.json", json.dumps({"format": ROUTER_FORMAT,
                                                                  "routes": sorted(self.detectors)}))

        return write_model_folder(out, write)

    @classmethod
    def load(cls, path: Path, *, device: str | torch.device = "cpu", cache: FeatureCache | None = None) -> Router:
        """Load a model set, or wrap a single detector directory as a one-route router."""
        path = Path(path)
        meta_path = path / "router.json"
        if not meta_path.is_file():
            det = load_detector(path, device=device, cache=cache)
            return cls({_route_of(det): det})
        meta = read_json_object(meta_path, what="model set")
        routes = meta.get("routes") if meta.get("format") == ROUTER_FORMAT else None
        if not isinstance(routes, list) or not routes:
            raise ModelFileError(meta_path, "not a cmdiad model set")
        known = sorted(set(ROUTE_NAMES.values()))
        if not all(isinstance(r, str) and r in known for r in routes):
            raise ModelFileError(meta_path, f"routes must be a list of {', '.join(known)}, got {routes!r}")
        return cls({name: load_detector(path / name, device=device, cache=cache) for name in routes})


def _one(scores: Scores, j: int) -> Scores:
    """Sample ``j`` of a batch of scores, as a batch of one."""
    return Scores(scores.image_score[j : j + 1], scores.anomaly_map[j : j + 1],
                  {k: (v[0][j : j + 1], v[1][j : j + 1]) for k, v in scores.per_modality.items()})


def _route_of(det: Detector) -> str:
    mods = frozenset(det.modalities)
    return ROUTE_NAMES[mods]
