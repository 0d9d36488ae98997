"""Result tables in the paper's shape and the results.{json,csv,md} files (method-spec §5).

A *record* is one method row evaluated on one category::

    {"method": "f2f", "main": "xyz", "category": "bagel", "i_auroc": 0.93, "p_auroc": 0.98,
     "aupro_30": 0.91, "aupro_1": 0.42, "fit_seconds": 12.5, "ms_per_sample": 80.1}

Rounding happens here and only here: 3 decimals per category, and the Mean column is the
mean of the rounded per-category values, rounded again to 3 decimals.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cmdiad.errors import DatasetError

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]
Cell = str | float | None

ROW_ORDER: tuple[str, ...] = (
    "xyz", "rgb", "dual", "f2f_xyz", "f2i_xyz", "i2f_xyz", "f2f_rgb", "f2i_rgb", "i2f_rgb",
)
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
TIMINGS: tuple[str, ...] = ("fit_seconds", "ms_per_sample")
RECORD_KEYS: tuple[str, ...] = ("method", "main", "category", *METRICS, *TIMINGS)
_SINGLE_ROW_METHODS = ("xyz", "rgb", "dual")


def row_name(record: Record) -> str:
    """The table row of a record: ``method`` for xyz/rgb/dual, else ``f"{method}_{main}"``."""
    method = str(record["method"])
    return method if method in _SINGLE_ROW_METHODS else f"{method}_{record['main']}"


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


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _rounded_mean(values: Sequence[float | None], digits: int) -> float | None:
    """Mean of the rounded values; None when any value is missing (a partial mean misleads)."""
    if not values or any(v is None for v in values):
        return None
    return round(sum(round(v, digits) for v in values) / len(values), digits)


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
    cells = {(row_name(r), str(r["category"])): _finite(r.get(metric)) for r in records}
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
        fit = [v for v in (_finite(r.get("fit_seconds")) for r in mine) if v is not None]
        infer = [v for v in (_finite(r.get("ms_per_sample")) for r in mine) if v is not None]
        rows.append([
            row_label(name),
            str(len(mine)),
            round(sum(fit), digits) if fit else None,
            round(sum(fit) / len(fit), digits) if fit else None,
            round(sum(infer) / len(infer), digits) if infer else None,
        ])
    return header, rows


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


def _json_safe(record: Record) -> dict[str, Any]:
    """Non-finite floats become null so that results.json is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_records(out_dir: Path | str) -> list[dict[str, Any]]:
    """Records in ``out_dir/results.json``; an empty list when the file does not exist.

    Raises:
        DatasetError: The file exists but is not a JSON list of records.
    """
    path = Path(out_dir) / "results.json"
    if not path.exists():
        return []
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


def records_to_csv(records: Sequence[Record]) -> str:
    """CSV text: a header then one line per record, columns ``row`` + :data:`RECORD_KEYS`."""
    buffer = io.StringIO()
    extra = sorted({k for r in records for k in r}.difference(RECORD_KEYS))
    writer = csv.DictWriter(buffer, fieldnames=["row", *RECORD_KEYS, *extra], lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({"row": row_name(record), **{k: _csv_value(v) for k, v in record.items()}})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def results_markdown(
    records: Sequence[Record], *, command: str, config: Mapping[str, Any], carried_over: int = 0
) -> str:
    """The results.md text: one table per metric, the timing table, then command and config."""
    parts = []
    for metric, label in METRICS.items():
        parts.append(f"## {label}\n\n" + format_markdown(*metric_table(records, metric)))
    parts.append("## Timing\n\n" + format_markdown(*timing_table(records), digits=2))
    provenance = f"## Command\n\n```\n{command}\n```\n"
    if carried_over:
        provenance += (
            f"\n{carried_over} record(s) above were kept from earlier runs of this folder; "
            "the command and config are those of the latest run.\n"
        )
    config_text = json.dumps(config, indent=2, sort_keys=True, default=str)
    parts.append(provenance + f"\n## Config\n\n```json\n{config_text}\n```\n")
    return "# Results\n\n" + "\n".join(parts)


def write_results(
    out_dir: Path | str,
    records: Sequence[Record],
    *,
    command: str,
    config: Mapping[str, Any],
    merge: bool = True,
) -> list[dict[str, Any]]:
    """Write results.json, results.csv and results.md into ``out_dir``, each atomically.

    Args:
        out_dir: Folder, created when missing.
        records: Records of this run.
        command: The exact command line that produced them.
        config: The resolved config (JSON-serialisable; other values are written with ``str``).
        merge: Merge with the records already in ``out_dir/results.json`` (see
            :func:`merge_records`) instead of replacing them.

    Returns:
        The records written.
    """
    _check_records(records)
    out = Path(out_dir)
    existing = load_records(out) if merge else []
    merged = merge_records(existing, records)
    carried = len(merged) - len(merge_records([], records))
    atomic_write_text(out / "results.json", json.dumps([_json_safe(r) for r in merged], indent=2) + "\n")
    atomic_write_text(out / "results.csv", records_to_csv(merged))
    md = results_markdown(merged, command=command, config=config, carried_over=carried)
    atomic_write_text(out / "results.md", md)
    logger.info("wrote %d result records (%d kept from before) to %s", len(merged), carried, out)
    return merged


def write_html_report(
    out_dir: Path | str, records: Sequence[Record], raw_dir: Path | str, **kwargs: Any
) -> Path:
    """Write report.html; see :func:`cmdiad.viz.html.write_html_report` for the keyword arguments.

    Imported lazily because :mod:`cmdiad.viz.html` builds on this module.
    """
    from cmdiad.viz.html import write_html_report as write

    return write(out_dir, records, raw_dir, **kwargs)
