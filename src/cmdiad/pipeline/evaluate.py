"""Recomputing metrics from an experiment's raw outputs (``raw/<row>/<category>.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmdiad.errors import DatasetError
from cmdiad.metrics.segmentation import evaluate
from cmdiad.pipeline.streams import parse_row
from cmdiad.viz.html import load_raw


def recompute_records(run: Path, *, mode: str = "exact") -> list[dict]:
    """Metrics of every ``raw/<row>/<category>.npz`` of an experiment folder."""
    raw = Path(run) / "raw"
    files = sorted(raw.glob("*/*.npz"))
    if not files:
        raise DatasetError(raw, "no raw results (expected raw/<row>/<category>.npz)")
    records = []
    for f in files:
        a = load_raw(f)
        method, main = parse_row(f.parent.name)
        metrics = evaluate(a.image_scores, a.labels, a.anomaly_maps.astype(np.float32), a.gt_masks, mode=mode)
        records.append({"method": method, "main": main, "category": f.stem, **metrics})
    return records
