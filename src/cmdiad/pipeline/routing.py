"""Mixed inference: route each sample to the detector that matches the modalities it has.

A model *set* holds a dual detector for samples with both modalities and MTFI detectors with
xyz and with rgb as main modality for samples that have only one (issue: mixed inference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from cmdiad.errors import ModelFileError
from cmdiad.features.cache import FeatureCache
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import load_detector, save_detector
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

    def score(self, records: Sequence[SampleRecord]) -> list[tuple[str | None, Scores | None, int]]:
        """Score every record with its route.

        Returns:
            One ``(route, scores, index)`` per record: ``scores`` holds that single sample
            (batch 1), both are None when no detector fits the sample.
        """
        groups: dict[str, list[int]] = {}
        out: list[tuple[str | None, Scores | None, int]] = [(None, None, i) for i in range(len(records))]
        for i, r in enumerate(records):
            name = self.route(r)
            if name is None:
                log.warning("%s: no detector for modalities %s", r.key, sorted(r.modalities))
                continue
            groups.setdefault(name, []).append(i)
        for name, idx in groups.items():
            scores = self.detectors[name].score([records[i] for i in idx])
            for j, i in enumerate(idx):
                one = Scores(scores.image_score[j : j + 1], scores.anomaly_map[j : j + 1],
                             {k: (v[0][j : j + 1], v[1][j : j + 1]) for k, v in scores.per_modality.items()})
                out[i] = (name, one, i)
        return out

    def save(self, out: Path) -> Path:
        """Write every detector to ``out/<route>/`` and ``out/router.json``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, det in self.detectors.items():
            save_detector(det, out / name)
        (out / "router.json").write_text(json.dumps({"format": ROUTER_FORMAT, "routes": sorted(self.detectors)}))
        return out

    @classmethod
    def load(cls, path: Path, *, device: str | torch.device = "cpu", cache: FeatureCache | None = None) -> Router:
        """Load a model set, or wrap a single detector directory as a one-route router."""
        path = Path(path)
        meta_path = path / "router.json"
        if not meta_path.is_file():
            det = load_detector(path, device=device, cache=cache)
            return cls({_route_of(det): det})
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            routes = meta["routes"] if meta.get("format") == ROUTER_FORMAT else None
        except (ValueError, KeyError, AttributeError) as exc:
            raise ModelFileError(meta_path, f"corrupted router file ({exc})") from exc
        if not isinstance(routes, list) or not routes:
            raise ModelFileError(meta_path, "not a cmdiad model set")
        return cls({name: load_detector(path / name, device=device, cache=cache) for name in routes})


def _route_of(det: Detector) -> str:
    mods = frozenset(det.modalities)
    return ROUTE_NAMES[mods]
