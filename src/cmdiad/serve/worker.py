"""Scoring one uploaded part (runs in the service's worker thread): validate, route, score, render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cmdiad.errors import DatasetError
from cmdiad.features.cache import FeatureCache
from cmdiad.io.mvtec3d import load_sample
from cmdiad.serve.store import Part, colour_scale
from cmdiad.types import PatchFeatures, SampleRecord
from cmdiad.viz.heatmaps import depth_render, resize_image

MIN_SIDE = 8
"""Smallest accepted image side in pixels."""


class NoFeatureCache(FeatureCache):
    """A feature cache that keeps nothing.

    Every upload is a new file, so the default in-memory cache of a loaded detector would keep
    the features of every part ever scored (it grew the server by ~0.7 GB over 2,000 parts).
    """

    def __init__(self) -> None:
        super().__init__(None)

    def get(self, extractor_key: str, sample_key: str, *, as_stored: bool = False) -> None:
        """Always a miss."""
        self.misses += 1
        return None

    def put(self, extractor_key: str, sample_key: str, pf: PatchFeatures, **_: object) -> PatchFeatures:
        """``pf`` on the CPU (float32), not stored."""
        return PatchFeatures(pf.features.detach().cpu().float(), pf.valid.detach().cpu().bool())


class UploadError(Exception):
    """A request the service refuses: an HTTP status (4xx/503) and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _describe(files: dict[str, tuple[Path, str]]) -> dict[Path, str]:
    return {path: f"{field} upload {name!r}" if name else f"{field} upload" for field, (path, name) in files.items()}


def _reason(exc: DatasetError, files: dict[str, tuple[Path, str]]) -> str:
    """``exc`` as ``<field upload>: problem``, with the service's temporary paths replaced by field names."""
    names = _describe(files)
    problem = exc.problem
    for path, desc in names.items():
        problem = problem.replace(str(path), desc)
    return f"{names.get(exc.path, 'upload')}: {problem}"


def _load(record: SampleRecord, files: dict[str, tuple[Path, str]]):
    """The sample's arrays; a 422 naming the field for unreadable, truncated or mismatched files."""
    try:
        sample = load_sample(record)
    except DatasetError as exc:
        raise UploadError(422, _reason(exc, files)) from exc
    arr = sample.rgb if sample.rgb is not None else sample.xyz
    if min(arr.shape[:2]) < MIN_SIDE:
        raise UploadError(422, f"part is {arr.shape[1]}x{arr.shape[0]} pixels; the smallest accepted side is "
                               f"{MIN_SIDE}")
    return sample


def score_upload(model: Any, files: dict[str, tuple[Path, str]], part_id: str) -> Part:
    """Score one part with the Router ``model``.

    Args:
        model: A Router (``route``, ``score``, ``detectors``).
        files: ``{"rgb" | "xyz": (path on disk, client filename)}``.
        part_id: Id of the part (its heatmap URL).

    Raises:
        UploadError: The files are unreadable, inconsistent, or no detector serves them.
    """
    record = SampleRecord(category="serve", split="predict", defect="unknown", stem="part",
                          rgb_path=files["rgb"][0] if "rgb" in files else None,
                          xyz_path=files["xyz"][0] if "xyz" in files else None)
    sample = _load(record, files)
    route = model.route(record)
    if route is None:
        raise UploadError(422, f"this model has no detector for parts with {' + '.join(sorted(record.modalities))} "
                               f"(its routes: {', '.join(sorted(model.detectors))})")
    t0 = time.perf_counter()
    try:
        _, scores, _ = model.score([record])[0]
    except DatasetError as exc:
        raise UploadError(422, _reason(exc, files)) from exc
    score_ms = 1000 * (time.perf_counter() - t0)
    det = model.detectors[route]
    score, threshold = float(scores.image_score[0]), det.threshold
    decision = "UNKNOWN" if threshold is None else ("FAIL" if score > threshold else "PASS")
    background = sample.rgb if sample.rgb is not None else depth_render(sample.xyz)
    amap = scores.anomaly_map[0].numpy()
    if background.shape[:2] != amap.shape:
        background = resize_image(background, amap.shape)
    result = {
        "id": part_id, "score": score, "threshold": threshold, "decision": decision, "route": route,
        "heatmap_url": f"/heatmaps/{part_id}.png", "received": time.time(),
        "files": {field: name for field, (_, name) in files.items()},
        "timing_ms": {"score": score_ms, "total": score_ms},
    }  # fmt: skip
    return Part(part_id, result, background, amap.astype(np.float16), colour_scale(det, amap))
