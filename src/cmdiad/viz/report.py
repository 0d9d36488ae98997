"""Result tables in the paper's shape and the results.{json,csv,md} files (method-spec §5).

A *record* is one method row evaluated on one category::

    {"method": "f2f", "main": "xyz", "category": "bagel", "num_test": 40, "i_auroc": 0.93,
     "p_auroc": 0.98, "aupro_30": 0.91, "aupro_1": 0.42,
     "per_defect": {"crack": {"num_test": 10, "i_auroc": 0.97, ...}, ...},
     "fit_seconds": 12.5, "ms_per_sample": 80.1}

On disk the metrics and the timings are kept apart: results.{json,csv,md} hold only what the
seed and the data determine (two runs give identical bytes), timings.{json,md} hold the
machine-dependent ``fit_seconds`` and ``ms_per_sample``. :func:`load_records` joins them again.

Rounding happens here and only here: 3 decimals per category, and the Mean column is the
mean of the rounded per-category values, rounded again to 3 decimals.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmdiad.errors import DatasetError
from cmdiad.io.atomic import atomic_write_text
from cmdiad.metrics.placebo import PLACEBO_KEYS
from cmdiad.metrics.reference import mean_over_categories
from cmdiad.rows import ALL_ROWS
from cmdiad.rows import row_name as _row_name

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]
Cell = str | float | None

ROW_ORDER: tuple[str, ...] = ALL_ROWS
ROW_LABELS: dict[str, str] = {
    "xyz": "Single xyz bank",
    "rgb": "Single RGB bank",
    "dual": "Dual bank",
    **{f"{m}_{main}": f"MTFI {m.upper()} ({'xyz' if main == 'xyz' else 'RGB'} main)"
       for m in ("f2f", "f2i", "i2f") for main in ("xyz", "rgb")},
}
METRICS: dict[str, str] = {
    "i_auroc": "I-AUROC",
    "p_auroc": "P-AUROC",
    "aupro_30": "AUPRO@30%",
    "aupro_1": "AUPRO@1%",
}
PLACEBOS: dict[str, str] = {PLACEBO_KEYS[k]: f"{METRICS[k]} placebo" for k in PLACEBO_KEYS}
"""Per defect type: a pixel metric of the good parts' maps under that type's masks (what the
map's spatial prior alone scores, :mod:`cmdiad.metrics.placebo`)."""
PLACEBO_NOTE = ("placebo: the good test parts' maps scored at that type's masks, i.e. about what a map "
                "that knows where the part is, and nothing of the defect, would get; a map sees a defect type "
                "only as far as its metric exceeds this, and where parts turn or shift between samples the "
                "masks miss the defects' true places (on generated parts it is off by up to 0.2 in P-AUROC in one "
                "category, 0.1 in the mean over categories)")
TIMINGS: tuple[str, ...] = ("fit_seconds", "ms_per_sample")
RECORD_KEYS: tuple[str, ...] = ("method", "main", "category", *METRICS, *TIMINGS)
CSV_KEYS: tuple[str, ...] = ("row", "method", "main", "category", "defect", "num_test", *METRICS, *PLACEBOS)
PER_DEFECT = "per_defect"
ALL_DEFECTS = "all"


def row_name(record: Record) -> str:
    """The table row of a record (:func:`cmdiad.rows.row_name` of its method and main)."""
    return _row_name(str(record["method"]), str(record["main"]))


def row_label(name: str) -> str:
    """Display label of a row name, e.g. ``"f2f_xyz"`` -> ``"MTFI F2F (xyz main)"``."""
    return ROW_LABELS.get(name, name)


def category_label(category: str) -> str:
    """Title-cased column name, e.g. ``"cable_gland"`` -> ``"Cable_Gland"``."""
    return "_".join(part.capitalize() for part in category.split("_"))


def ordered_rows(records: Iterable[Record]) -> list[str]:
    """Row names present in ``records``: the paper's order first, unknown rows after, sorted."""
    present = {row_name(r) for r in records}
    known = [name for name in ROW_ORDER if name in present]
    return known + sorted(present.difference(ROW_ORDER))


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not finite (NaN in memory, null in results.json)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _rounded_mean(values: Sequence[float | None], digits: int) -> float | None:
    """Mean of the rounded values, rounded (the reference tables' way); None when any value is missing."""
    if not values or any(v is None for v in values):
        return None  # a partial mean misleads
    return mean_over_categories(values, digits)


def metric_table(
    records: Sequence[Record], metric: str, *, digits: int = 3
) -> tuple[list[str], list[list[Cell]]]:
    """One metric as a table: rows = methods, columns = categories and Mean.

    Args:
        records: Result records (see the module docstring).
        metric: Record key, e.g. ``"i_auroc"`` or ``"fit_seconds"``.
        digits: Decimals kept per category and for the Mean.

    Returns:
        ``(header, rows)``: header is ``["Method", <Title_Cased categories, sorted>..., "Mean"]``;
        each row is ``[label, value per category..., mean]`` with values rounded to ``digits``
        and ``None`` where a category is missing or not finite (then the Mean is ``None`` too).
    """
    categories = sorted({str(r["category"]) for r in records})
    cells = {(row_name(r), str(r["category"])): finite_or_none(r.get(metric)) for r in records}
    header = ["Method", *(category_label(c) for c in categories), "Mean"]
    rows: list[list[Cell]] = []
    for name in ordered_rows(records):
        values = [cells.get((name, c)) for c in categories]
        shown = [None if v is None else round(v, digits) for v in values]
        rows.append([row_label(name), *shown, _rounded_mean(values, digits)])
    return header, rows


def timing_table(records: Sequence[Record], *, digits: int = 2) -> tuple[list[str], list[list[Cell]]]:
    """Per method: total and mean fit seconds over categories, and mean milliseconds per sample.

    Returns:
        ``(header, rows)`` like :func:`metric_table`; missing timings are skipped in the sums.
    """
    header = ["Method", "Categories", "Fit s (total)", "Fit s (mean)", "ms / sample (mean)"]
    rows: list[list[Cell]] = []
    for name in ordered_rows(records):
        mine = [r for r in records if row_name(r) == name]
        fit = [v for v in (finite_or_none(r.get("fit_seconds")) for r in mine) if v is not None]
        infer = [v for v in (finite_or_none(r.get("ms_per_sample")) for r in mine) if v is not None]
        rows.append([
            row_label(name),
            str(len(mine)),
            round(sum(fit), digits) if fit else None,
            round(sum(fit) / len(fit), digits) if fit else None,
            round(sum(infer) / len(infer), digits) if infer else None,
        ])
    return header, rows


def count_table(records: Sequence[Record]) -> tuple[list[str], list[list[Cell]]]:
    """Test samples each row scored per category (``num_test``), so side-by-side rows can be compared.

    Returns:
        ``(header, rows)`` like :func:`metric_table` with a ``Total`` column; counts are strings,
        ``None`` where unknown.
    """
    categories = sorted({str(r["category"]) for r in records})
    cells = {(row_name(r), str(r["category"])): r.get("num_test") for r in records}
    rows: list[list[Cell]] = []
    for name in ordered_rows(records):
        values = [cells.get((name, c)) for c in categories]
        total = None if any(v is None for v in values) else str(sum(int(v) for v in values))
        rows.append([row_label(name), *(None if v is None else str(int(v)) for v in values), total])
    return ["Method", *(category_label(c) for c in categories), "Total"], rows


def defect_types(records: Iterable[Record]) -> list[str]:
    """Sorted defect types found in the records' ``per_defect`` entries."""
    return sorted({str(k) for r in records for k in dict(r.get(PER_DEFECT) or {})})


def _per_defect_cells(records: Sequence[Record], key: str) -> dict[tuple[str, str], list[Any]]:
    """``{(row, defect type): [value per category having that type]}``."""
    cells: dict[tuple[str, str], list[Any]] = {}
    for r in records:
        for kind, values in dict(r.get(PER_DEFECT) or {}).items():
            cells.setdefault((row_name(r), str(kind)), []).append(values.get(key))
    return cells


def defect_table(
    records: Sequence[Record], metric: str, *, digits: int = 3
) -> tuple[list[str], list[list[Cell]]]:
    """One metric per defect type: rows = methods, columns = defect types, each the mean over the
    categories that have that type (mean of rounded values, as :func:`metric_table`).

    Returns:
        ``(header, rows)``: header ``["Method", <defect types>...]``; ``None`` where a row lacks
        the type or a category's value is not finite.
    """
    kinds = defect_types(records)
    cells = _per_defect_cells(records, metric)
    rows: list[list[Cell]] = []
    for name in ordered_rows(records):
        values = [cells.get((name, k)) for k in kinds]
        rows.append([row_label(name), *(None if v is None else _rounded_mean([finite_or_none(x) for x in v], digits)
                                        for v in values)])
    return ["Method", *kinds], rows


def defect_count_table(records: Sequence[Record]) -> tuple[list[str], list[list[Cell]]]:
    """Test samples per row and defect type, summed over categories (counts as strings)."""
    kinds = defect_types(records)
    cells = _per_defect_cells(records, "num_test")
    rows: list[list[Cell]] = []
    for name in ordered_rows(records):
        values = [cells.get((name, k)) for k in kinds]
        rows.append([row_label(name), *(None if v is None or None in v else str(sum(int(x) for x in v))
                                        for v in values)])
    return ["Method", *kinds], rows


def _format_cell(value: Cell, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def format_markdown(header: Sequence[str], rows: Sequence[Sequence[Cell]], *, digits: int = 3) -> str:
    """A GitHub markdown table; floats with ``digits`` decimals, ``None`` as ``n/a``.

    The first column is left-aligned, the others right-aligned (as pandas ``to_markdown``).
    """
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", *("---:" for _ in header[1:])]) + "|",
    ]
    lines += ["| " + " | ".join(_format_cell(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def merge_records(existing: Sequence[Record], new: Sequence[Record]) -> list[dict[str, Any]]:
    """Update ``existing`` with ``new``: same (row, category) is replaced, others are kept.

    Order: existing records keep their place (replaced in place), new pairs are appended.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for record in [*existing, *new]:
        merged[(row_name(record), str(record["category"]))] = dict(record)
    return list(merged.values())


def _check_records(records: Sequence[Record]) -> None:
    for i, record in enumerate(records):
        missing = [k for k in ("method", "main", "category") if k not in record]
        if missing:
            raise ValueError(f"result record {i} lacks {missing}: {dict(record)}")


def plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python numbers/lists, recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_safe(value: Any) -> Any:
    """Plain values where non-finite floats become null, so that results.json is strict JSON."""
    value = plain(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def split_timings(records: Sequence[Record]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(metric records, timing records)``: timing keys move to their own records.

    Timing records hold ``row``, ``method``, ``main``, ``category`` and the :data:`TIMINGS` keys;
    records without any timing give none.
    """
    metrics, timings = [], []
    for record in records:
        metrics.append({k: v for k, v in record.items() if k not in TIMINGS})
        found = {k: record[k] for k in TIMINGS if k in record}
        if found:
            keys = {k: record[k] for k in ("method", "main", "category")}
            timings.append({"row": row_name(record), **keys, **found})
    return metrics, timings


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(path, f"cannot read results: {err}") from err
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(path, "expected a JSON list of result records")
    try:
        _check_records(data)
    except ValueError as err:
        raise DatasetError(path, str(err)) from err
    return data


def load_records(out_dir: Path | str) -> list[dict[str, Any]]:
    """Records in ``out_dir/results.json``, joined with their timings from ``timings.json``.

    Returns:
        The records; an empty list when results.json does not exist.

    Raises:
        DatasetError: A file exists but is not a JSON list of records.
    """
    out = Path(out_dir)
    path = out / "results.json"
    if not path.exists():
        return []
    records = _read_json_list(path)
    timings = load_timings(out)
    return [{**r, **timings.get((row_name(r), str(r["category"])), {})} for r in records]


def load_timings(out_dir: Path | str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(row, category): {"fit_seconds": ..., "ms_per_sample": ...}}`` from ``timings.json``."""
    path = Path(out_dir) / "timings.json"
    if not path.exists():
        return {}
    return {
        (row_name(t), str(t["category"])): {k: t[k] for k in TIMINGS if k in t} for t in _read_json_list(path)
    }


def _csv_number(value: Any, missing: str) -> Any:
    value = plain(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return missing if value is None else value


def _csv_lines(record: Record) -> list[dict[str, Any]]:
    base = {"row": row_name(record), **{k: record.get(k) for k in ("method", "main", "category")}}
    lines = [{**base, "defect": ALL_DEFECTS, "num_test": record.get("num_test"),
              **{k: record.get(k) for k in METRICS}}]
    for defect, values in sorted(dict(record.get(PER_DEFECT) or {}).items()):
        lines.append({**base, "defect": defect, **{k: values.get(k) for k in ("num_test", *METRICS, *PLACEBOS)}})
    return lines


def records_to_csv(records: Sequence[Record]) -> str:
    """Flat CSV text: one line per row, category and defect type (``"all"`` = the whole test set).

    Columns are :data:`CSV_KEYS`; values are plain numbers (``nan`` where undefined), no timings.
    The placebo columns are per defect type only (empty on the ``"all"`` lines).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_KEYS), lineterminator="\n")
    writer.writeheader()
    for record in records:
        for line in _csv_lines(record):
            writer.writerow({k: _csv_number(v, "nan" if k in METRICS or k in PLACEBOS else "")
                             for k, v in line.items()})
    return buffer.getvalue()


def results_markdown(records: Sequence[Record], *, config: Mapping[str, Any], command: str = "") -> str:
    """The results.md text: one table per metric, test-set sizes, per-defect tables, then the config.

    Nothing machine- or time-dependent goes in (timings are in timings.md, the machine in run.json).
    """
    parts = [f"## {label}\n\n" + format_markdown(*metric_table(records, metric)) for metric, label in METRICS.items()]
    parts.append("## Test samples per row\n\n" + format_markdown(*count_table(records)))
    kinds = defect_types(records)
    if kinds:
        parts.append("## Test samples per defect type (sum over categories)\n\n"
                     + format_markdown(*defect_count_table(records)))
        for metric, label in METRICS.items():
            parts.append(f"## {label} per defect type (good vs that type, mean over categories)\n\n"
                         + format_markdown(*defect_table(records, metric)))
        for metric, label in PLACEBOS.items():
            parts.append(f"## {label} per defect type (mean over categories; {PLACEBO_NOTE})\n\n"
                         + format_markdown(*defect_table(records, metric)))
    provenance = f"## Command\n\n```\n{command}\n```\n\n" if command else (
        "The command, dataset, machine and versions are in run.json; timings in timings.md.\n\n")
    config_text = json.dumps(config, indent=2, sort_keys=True, default=str)
    parts.append(provenance + f"## Config\n\n```json\n{config_text}\n```\n")
    return "# Results\n\n" + "\n".join(parts)


def timings_markdown(records: Sequence[Record]) -> str:
    """The timings.md text: the timing table (machine-dependent, kept out of results.md)."""
    return "# Timings\n\n" + format_markdown(*timing_table(records), digits=2)


def write_results(
    out_dir: Path | str,
    records: Sequence[Record],
    *,
    config: Mapping[str, Any],
    command: str = "",
    merge: bool = True,
) -> list[dict[str, Any]]:
    """Write results.{json,csv,md} and, when records carry timings, timings.{json,md}; each atomically.

    Args:
        out_dir: Folder, created when missing.
        records: Records of this run (metrics, optionally timings).
        config: The resolved config (JSON-serialisable; other values are written with ``str``).
        command: A command line to show in results.md; leave empty to keep results.md independent
            of paths (the experiment writes its command to run.json).
        merge: Merge with the records already in ``out_dir`` (see :func:`merge_records`) instead
            of replacing them.

    Returns:
        The records written (with timings).
    """
    _check_records(records)
    out = Path(out_dir)
    existing = load_records(out) if merge else []
    merged = [_json_safe(r) for r in merge_records(existing, records)]
    carried = len(merged) - len(merge_records([], records))
    metrics, timings = split_timings(merged)
    atomic_write_text(out / "results.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "results.csv", records_to_csv(metrics))
    atomic_write_text(out / "results.md", results_markdown(metrics, config=config, command=command))
    if timings:
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=2) + "\n")
        atomic_write_text(out / "timings.md", timings_markdown(merged))
    logger.info("wrote %d result records (%d kept from before) to %s", len(merged), carried, out)
    return merged
