"""Which sensors to deploy: per category, the best row for each sensor set a line could run.

A row needs at inference what its ``main`` says: ``rgb`` (camera only), ``xyz`` (3D scanner
only) or ``both`` (the dual bank). For each category and sensor set the recommended row is the
one with the highest mean of I-AUROC and of the *skill* of P-AUROC and AUPRO@30% over their
placebo, averaged over the defect types: ``(metric - placebo) / (1 - placebo)``, where the
placebo is what the map's spatial prior alone scores (:mod:`cmdiad.metrics.placebo`): 0 for a
map that only knows where the part is, 1 for a perfect one, whatever its prior. A map that only
lifts the whole part (as a hallucinated map under the pixel maximum does) gains raw pixel
metrics without finding a defect, and must not win the recommendation by it; a plain
difference would favour maps with a low prior among those that localise perfectly. Where a
candidate lacks placebos (records written before them), the raw overall metrics rank, as
before. The row is shown with its raw metrics, its I-AUROC and P-AUROC skill per defect type,
and its milliseconds per sample, so a quality engineer sees what the 3D scanner buys on each
defect type and what MTFI recovers without it. A row with a second stream (an MTFI row)
displaces its sensors' own bank when its merit is higher than the bank's by more than
``BANK_MARGIN``: the bank is simpler and faster, and a smaller lead is within what the placebo's
error can make. The table names beside every pick the best MTFI row and its merit minus the
bank's, so a lead the margin keeps out is still seen.

The placebo is approximate: masks laid on other good parts miss the defects' true places where
parts turn or shift. On generated data, where the exact prior is known (``cmdiad synth
--null-twins``; docs/method.md), it is off by up to 0.2 in P-AUROC in one category: enough to
rank two maps that see nothing of a defect type apart by skill. Leads below about 0.05 in merit
are within that error both ways (``benchmarks/bench_recommend.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cmdiad.metrics.placebo import PLACEBO_KEYS
from cmdiad.viz.report import category_label, finite_or_none, row_label, row_name

SENSOR_SETS: dict[str, str] = {"rgb": "RGB camera only", "xyz": "3D scanner only", "both": "RGB + 3D"}
"""Record ``main`` -> the sensors its row reads at inference."""

BANKS: dict[str, str] = {"rgb": "rgb", "xyz": "xyz", "both": "dual"}
"""Sensor set -> the row that is those sensors' own bank."""
BANK_MARGIN = 0.1
"""How much higher a row's merit must be than its sensors' own bank's for it to be recommended
instead. Measured on generated sets whose exact prior is known (``benchmarks/bench_recommend.py``,
runs of the twenty-first session, the current pixel fusion): MTFI rows that saw nothing beyond
their prior led their bank by up to 0.049 in estimated merit (27 of 36 cells), rows that did see
more by 0.002 to 0.038 (9 cells), so no margin separates the two. Without a margin the report
would name a second stream on 3 of the demo's 6 one-sensor cells, where it sees nothing beyond
its prior; with 0.1 it keeps the bank wherever a lead is within what the placebo's error
produced (up to 0.069 under the former pixel fusion), at the cost of real leads it does not
recommend (mean regret 0.0037 against 0.0009 without a margin; largest 0.039, s7 shaded dome), and names
beside the bank the best such row and its lead."""

_RANKED = ("i_auroc", "p_auroc", "aupro_30")
_PIXEL = ("p_auroc", "aupro_30")


def _skill(record: Mapping[str, Any], key: str) -> dict[str, float]:
    """``{defect type: (metric - placebo) / (1 - placebo)}`` where both are finite and placebo < 1."""
    out = {}
    for kind, m in dict(record.get("per_defect") or {}).items():
        value, placebo = finite_or_none(m.get(key)), finite_or_none(m.get(PLACEBO_KEYS[key]))
        if value is not None and placebo is not None and placebo < 1.0:
            out[str(kind)] = (value - placebo) / (1.0 - placebo)
    return out


def _has_placebo(record: Mapping[str, Any]) -> bool:
    per = dict(record.get("per_defect") or {})
    return bool(per) and all(set(_skill(record, k)) == set(per) for k in _PIXEL)


def merit(record: Mapping[str, Any], skill: bool) -> float:
    """What the ranking maximises: the mean of I-AUROC and, with ``skill``, the P-AUROC and
    AUPRO@30% skill over their placebo averaged over defect types (else the raw overall metrics)."""
    if skill:
        pixel = [sum(v.values()) / len(v) for v in (_skill(record, k) for k in _PIXEL)]
        values = [finite_or_none(record.get("i_auroc")), *pixel]
    else:
        values = [finite_or_none(record.get(k)) for k in _RANKED]
    return -math.inf if None in values else sum(values) / len(values)


def merits(candidates: Sequence[Mapping[str, Any]]) -> list[float]:
    """:func:`merit` of each candidate: with skill where every candidate has placebos, else raw."""
    skill = all(_has_placebo(r) for r in candidates)
    return [merit(r, skill) for r in candidates]


def bank_index(candidates: Sequence[Mapping[str, Any]]) -> int | None:
    """Where the sensors' own bank is among the candidates, if it is."""
    return next((i for i, r in enumerate(candidates) if row_name(r) == BANKS.get(str(r.get("main")))), None)


def challenger(candidates: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], float] | None:
    """The row with the highest :func:`merit <merits>` other than the sensors' own bank, and its merit
    minus the bank's; ``None`` where the candidates lack the bank or any other row."""
    bank = bank_index(candidates)
    others = [i for i in range(len(candidates)) if i != bank]
    if bank is None or not others:
        return None
    scores = merits(candidates)
    top = max(others, key=scores.__getitem__)
    return candidates[top], scores[top] - scores[bank]


def _decide(candidates: Sequence[Mapping[str, Any]], margin: float) -> tuple[Mapping[str, Any], str | None]:
    """The recommended record (see :func:`pick`) and the :func:`challenger` beside the sensors' own
    bank (the recommended row where it is), as ``"row: lead"``."""
    scores = merits(candidates)
    best = candidates[max(range(len(candidates)), key=scores.__getitem__)]
    found = challenger(candidates)
    if found is None:
        return best, None
    row, lead = found
    return (best if lead > margin else candidates[bank_index(candidates)]), f"{row_label(row_name(row))}: {lead:+.3f}"


def pick(candidates: Sequence[Mapping[str, Any]], *, margin: float = BANK_MARGIN) -> Mapping[str, Any]:
    """The recommended record among rows that need the same sensors: the highest :func:`merit`
    (skill over the placebo where every candidate has placebos, else the raw metrics), but the
    sensors' own bank unless that row beats it by more than ``margin``."""
    return _decide(candidates, margin)[0]


def _per_defect(record: Mapping[str, Any], digits: int) -> str:
    per = record.get("per_defect") or {}
    return ", ".join(f"{d} {per[d]['i_auroc']:.{digits}f}" for d in sorted(per)
                     if finite_or_none(per[d].get("i_auroc")) is not None)


def _per_defect_skill(record: Mapping[str, Any], digits: int) -> str | None:
    skill = _skill(record, "p_auroc")
    return ", ".join(f"{d} {skill[d]:.{digits - 1}f}" for d in sorted(skill)) or None


def recommendation_table(records: Sequence[Mapping[str, Any]], *, digits: int = 3) -> tuple[list[str], list[list]]:
    """Rows ``[category, sensors, best row, I-AUROC, P-AUROC, AUPRO@30%, I-AUROC per defect,
    P-AUROC skill over placebo per defect, ms/sample, best MTFI row and its merit minus the
    bank's]`` (see the module doc for the ranking; the last cell is empty where the bank or every
    other row that needs the same sensors is missing).

    Args:
        records: Result records (with ``per_defect``; ``ms_per_sample`` when timings were joined).
        digits: Decimals of the metrics.
    """
    header = ["Category", "Sensors at inference", "Best row", "I-AUROC", "P-AUROC", "AUPRO@30%",
              "I-AUROC per defect type", "P-AUROC skill over placebo per defect type",
              "ms / sample", "Best MTFI row: merit minus the bank's"]
    rows: list[list] = []
    for category in sorted({str(r["category"]) for r in records}):
        for main, sensors in SENSOR_SETS.items():
            mine = [r for r in records if str(r["category"]) == category and r.get("main") == main]
            if not mine:
                continue
            best, challenger = _decide(mine, BANK_MARGIN)
            ms = best.get("ms_per_sample")
            rows.append([category_label(category), sensors, row_label(row_name(best)),
                         *(round(float(best[k]), digits) for k in _RANKED), _per_defect(best, digits),
                         _per_defect_skill(best, digits), None if ms is None else f"{float(ms):.1f}",
                         challenger])
    return header, rows
