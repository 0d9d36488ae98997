"""Recomputing metrics from an experiment's raw outputs (``raw/<row>/<category>.npz``)."""

from __future__ import annotations

import json
from pathlib import Path

from cmdiad.errors import DatasetError
from cmdiad.metrics.per_defect import evaluate_record
from cmdiad.pipeline.streams import parse_row
from cmdiad.viz.html import load_raw
from cmdiad.viz.report import plain


def run_aupro_mode(run: Path) -> str:
    """The AU-PRO mode the experiment in ``run`` used (its config.json), ``"exact"`` when unknown."""
    try:
        config = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
        return str(config["metrics"]["aupro_mode"])
    except (OSError, ValueError, KeyError, TypeError):
        return "exact"


def recompute_records(run: Path, *, mode: str | None = None) -> list[dict]:
    """Metrics of every ``raw/<row>/<category>.npz`` of an experiment folder.

    The experiment computes its records from the same arrays with the same function, so with
    the run's AU-PRO mode (the default) these equal results.json (``per_defect`` included).

    Returns:
        Records with method, main, category, ``num_test``, the overall metrics and ``per_defect``.
    """
    raw = Path(run) / "raw"
    files = sorted(raw.glob("*/*.npz"))
    if not files:
        raise DatasetError(raw, "no raw results (expected raw/<row>/<category>.npz)")
    mode = mode or run_aupro_mode(run)
    records = []
    for f in files:
        a = load_raw(f)
        method, main = parse_row(f.parent.name)
        defects = a.defects if all(str(d) for d in a.defects) else None  # older files lack defect types
        metrics = evaluate_record(a.image_scores, a.labels, a.anomaly_maps, a.gt_masks, defects, mode,
                                  where=f"{f.parent.name}/{f.stem}")
        records.append(plain({"method": method, "main": main, "category": f.stem, **metrics}))
    return records
