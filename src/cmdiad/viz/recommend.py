"""Which sensors to deploy: per category, the best row for each sensor set a line could run.

A row needs at inference what its ``main`` says: ``rgb`` (camera only), ``xyz`` (3D scanner
only) or ``both`` (the dual bank). For each category and sensor set the recommended row is the
one with the highest mean of I-AUROC, P-AUROC and AUPRO@30%, shown with its per-defect-type
I-AUROC and its milliseconds per sample, so a quality engineer sees what the 3D scanner buys
on each defect type and what MTFI recovers without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cmdiad.viz.report import category_label, row_label, row_name

SENSOR_SETS: dict[str, str] = {"rgb": "RGB camera only", "xyz": "3D scanner only", "both": "RGB + 3D"}
"""Record ``main`` -> the sensors its row reads at inference."""

_RANKED = ("i_auroc", "p_auroc", "aupro_30")


def _merit(record: Mapping[str, Any]) -> float:
    values = [float(record.get(k, math.nan)) for k in _RANKED]
    return -math.inf if any(not math.isfinite(v) for v in values) else sum(values) / len(values)


def _per_defect(record: Mapping[str, Any], digits: int) -> str:
    per = record.get("per_defect") or {}
    return ", ".join(f"{d} {per[d]['i_auroc']:.{digits}f}" for d in sorted(per)
                     if math.isfinite(float(per[d].get("i_auroc", math.nan))))


def recommendation_table(records: Sequence[Mapping[str, Any]], *, digits: int = 3) -> tuple[list[str], list[list]]:
    """Rows ``[category, sensors, best row, I-AUROC, P-AUROC, AUPRO@30%, I-AUROC per defect, ms/sample]``.

    Args:
        records: Result records (with ``per_defect``; ``ms_per_sample`` when timings were joined).
        digits: Decimals of the metrics.
    """
    header = ["Category", "Sensors at inference", "Best row", "I-AUROC", "P-AUROC", "AUPRO@30%",
              "I-AUROC per defect type", "ms / sample"]
    rows: list[list] = []
    for category in sorted({str(r["category"]) for r in records}):
        for main, sensors in SENSOR_SETS.items():
            mine = [r for r in records if str(r["category"]) == category and r.get("main") == main]
            if not mine:
                continue
            best = max(mine, key=_merit)
            ms = best.get("ms_per_sample")
            rows.append([category_label(category), sensors, row_label(row_name(best)),
                         *(round(float(best[k]), digits) for k in _RANKED), _per_defect(best, digits),
                         None if ms is None else round(float(ms), 1)])
    return header, rows
