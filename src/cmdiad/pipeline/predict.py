"""Writing per-sample predictions: score, pass/fail, heatmap overlays, JSON and CSV summaries."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmdiad.io.image import read_rgb
from cmdiad.io.pointcloud import read_xyz
from cmdiad.pipeline.encoder import Progress
from cmdiad.pipeline.routing import Router
from cmdiad.types import SampleRecord
from cmdiad.viz.heatmaps import depth_render, overlay, save_png

log = logging.getLogger(__name__)

FIELDS = ("sample", "route", "score", "threshold", "anomalous", "rgb", "xyz", "heatmaps")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:]


def _heatmaps(rec: SampleRecord, amap: np.ndarray, vmax: float, out: Path, index: int) -> list[str]:
    written = []
    base = f"{index:04d}_{_safe(rec.stem)}"
    backgrounds = []
    if rec.rgb_path is not None:
        backgrounds.append(("rgb", read_rgb(rec.rgb_path)))
    if rec.xyz_path is not None:
        backgrounds.append(("depth", depth_render(read_xyz(rec.xyz_path))))
    for name, image in backgrounds:
        path = out / "heatmaps" / f"{base}_{name}.png"
        save_png(path, overlay(image, amap, vmin=0.0, vmax=vmax))
        written.append(str(path.relative_to(out)))
    return written


def write_predictions(
    router: Router, records: Sequence[SampleRecord], out: Path, *, progress: Progress | None = None
) -> list[dict]:
    """Score ``records`` with ``router`` and write results under ``out``.

    Writes ``predictions.json``, ``predictions.csv`` and ``heatmaps/<n>_<stem>_{rgb,depth}.png``
    (the anomaly map over the RGB image and over a depth rendering of the point cloud).
    Heatmaps of one route share a colour scale (0 to the route's largest pixel score).

    Returns:
        One dict per record, in input order; ``score`` is None where no detector fits.
    """
    out = Path(out)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    scored = router.score(records)
    vmax: dict[str, float] = {}
    for route, scores, _ in scored:
        if route is not None and scores is not None:
            vmax[route] = max(vmax.get(route, 0.0), float(scores.anomaly_map.max()))
    rows = []
    for n, (route, scores, i) in enumerate(scored):
        rec = records[i]
        row = {"sample": rec.key if rec.split != "predict" else str(rec.rgb_path or rec.xyz_path),
               "route": route, "score": None, "threshold": None, "anomalous": None,
               "rgb": str(rec.rgb_path or ""), "xyz": str(rec.xyz_path or ""), "heatmaps": []}
        if route is not None and scores is not None:
            threshold = router.detectors[route].threshold
            score = float(scores.image_score[0])
            row.update(score=score, threshold=threshold,
                       anomalous=None if threshold is None else bool(score > threshold))
            row["heatmaps"] = _heatmaps(rec, scores.anomaly_map[0].numpy(), vmax[route] or 1.0, out, n)
        rows.append(row)
        if progress is not None:
            progress("heatmaps", n + 1, len(scored))
    (out / "predictions.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "heatmaps": ";".join(row["heatmaps"])})
    return rows
