"""Scoring uploaded parts (in the service's scoring thread): validate, route, score a batch, keep the map."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdiad.errors import DatasetError
from cmdiad.features.cache import FeatureCache
from cmdiad.io.mvtec3d import load_sample
from cmdiad.serve.batcher import Job
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


def forget_inputs(model: Any) -> None:
    """Stop the model's encoders from keeping each upload's preprocessed input in memory.

    A loaded detector's encoder keeps every input it preprocessed (keyed by file, for fitting and
    experiments); in a service every upload is a new file, so that store would only grow (about
    0.4 MB per 192x192 part). Models without an encoder (ONNX) are left as they are.
    """
    for det in getattr(model, "detectors", {}).values():
        enc = getattr(det, "encoder", None)
        if enc is not None:
            enc.keep_inputs = False


@dataclass
class _Prepared:
    """An upload that passed validation: its record, arrays and route."""

    record: SampleRecord
    sample: Any
    route: str


def _prepare(model: Any, files: dict[str, tuple[Path, str]]) -> _Prepared:
    record = SampleRecord(category="serve", split="predict", defect="unknown", stem="part",
                          rgb_path=files["rgb"][0] if "rgb" in files else None,
                          xyz_path=files["xyz"][0] if "xyz" in files else None)
    sample = _load(record, files)
    route = model.route(record)
    if route is None:
        raise UploadError(422, f"this model has no detector for parts with {' + '.join(sorted(record.modalities))} "
                               f"(its routes: {', '.join(sorted(model.detectors))})")
    return _Prepared(record, sample, route)


def score_batch(model: Any, jobs: Sequence[Job]) -> list[Part | UploadError]:
    """Score queued parts with the Router ``model``: one ``model.score`` call (a forward pass per route).

    Args:
        model: A Router (``route``, ``score``, ``detectors``).
        jobs: The parts, each with ``files`` (``{"rgb" | "xyz": (path, client filename)}``),
            ``part_id`` and ``queued`` (``time.perf_counter()`` when queued).

    Returns:
        Per job, in order, its :class:`Part` or the :class:`UploadError` that refuses it (files
        unreadable, inconsistent, or no detector for them); one bad part never fails the others.
    """
    t0 = time.perf_counter()
    out: list[Part | UploadError | None] = [None] * len(jobs)
    ready: dict[int, _Prepared] = {}
    for i, job in enumerate(jobs):
        try:
            ready[i] = _prepare(model, job.files)
        except UploadError as exc:
            out[i] = exc
    order = list(ready)
    failed: dict[int, DatasetError] = {}
    t1 = time.perf_counter()
    with torch.inference_mode():  # nothing a service computes is ever differentiated
        scored = model.score([ready[i].record for i in order], on_error=failed.__setitem__) if order else []
    score_ms = 1000 * (time.perf_counter() - t1)
    for j, i in enumerate(order):
        job = jobs[i]
        if j in failed:
            out[i] = UploadError(422, _reason(failed[j], job.files))
            continue
        timing = {"queue": 1000 * (t0 - job.queued), "read": 1000 * (t1 - t0) / len(jobs), "score": score_ms,
                  "batch": len(order)}
        out[i] = _part(model, ready[i], scored[j][1], job, timing)
    return out  # type: ignore[return-value]


def _part(model: Any, prep: _Prepared, scores: Any, job: Job, timing: dict[str, float]) -> Part:
    det = model.detectors[prep.route]
    score, threshold = float(scores.image_score[0]), det.threshold
    decision = "UNKNOWN" if threshold is None else ("FAIL" if score > threshold else "PASS")
    sample = prep.sample
    background = sample.rgb if sample.rgb is not None else depth_render(sample.xyz)
    amap = scores.anomaly_map[0].numpy()
    if background.shape[:2] != amap.shape:
        background = resize_image(background, amap.shape)
    result = {
        "id": job.part_id, "score": score, "threshold": threshold, "decision": decision, "route": prep.route,
        "heatmap_url": f"/heatmaps/{job.part_id}.png", "received": time.time(),
        "files": {field: name for field, (_, name) in job.files.items()},
        "timing_ms": {**timing, "total": timing["score"]},
    }  # fmt: skip
    return Part(job.part_id, result, background, amap.astype(np.float16), colour_scale(det, amap))
