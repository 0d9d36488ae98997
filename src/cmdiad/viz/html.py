"""A self-contained report.html: result tables plus heatmap overlays of selected test samples.

The file opens from disk without a server: images are embedded as base64 PNG data URIs, the
CSS is inline, and there is no script and no external link.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.io.atomic import atomic_write_text
from cmdiad.io.image import read_rgb
from cmdiad.io.pointcloud import read_xyz
from cmdiad.viz.heatmaps import colormap_table, depth_render, draw_contour, overlay, resize_image
from cmdiad.viz.plots import colour_bar, histogram_svg, roc_svg
from cmdiad.viz.report import (
    METRICS,
    PLACEBO_NOTE,
    PLACEBOS,
    Cell,
    count_table,
    defect_count_table,
    defect_table,
    defect_types,
    metric_table,
    ordered_rows,
    row_label,
    row_name,
    timing_table,
)

logger = logging.getLogger(__name__)

RAW_KEYS = ("image_scores", "labels", "anomaly_maps", "gt_masks", "paths")

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
.samples { display: flex; flex-wrap: wrap; gap: 0.6em; margin-bottom: 1em; }
figure { margin: 0; padding: 0.3em; border: 1px solid #ccc; font-size: 0.75em; }
figure.anomalous { border-color: #c33; }
figcaption { max-width: 24em; word-break: break-all; }
img { display: inline-block; margin-right: 2px; }
pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
.plots { display: flex; flex-wrap: wrap; gap: 0.6em; align-items: flex-start; }
.colourbar { font-size: 0.75em; display: flex; align-items: center; gap: 0.4em; }
"""


@dataclass
class RawResults:
    """Per-sample outputs of one row on one category (``raw/<row>/<category>.npz``).

    Attributes:
        image_scores: ``(N,)`` float.
        labels: ``(N,)`` int, 1 = defective.
        anomaly_maps: ``(N, H, W)`` float.
        gt_masks: ``(N, H, W)`` bool.
        paths: ``(N,)`` sample keys.
        rgb_files: ``(N,)`` RGB file per sample, ``""`` when none.
        xyz_files: ``(N,)`` xyz TIFF per sample, ``""`` when none.
        defects: ``(N,)`` defect type per sample (``"good"`` for normal ones), ``""`` in files
            written before defect types were stored.
    """

    image_scores: np.ndarray
    labels: np.ndarray
    anomaly_maps: np.ndarray
    gt_masks: np.ndarray
    paths: np.ndarray
    rgb_files: np.ndarray
    xyz_files: np.ndarray
    defects: np.ndarray


def load_raw(path: Path | str) -> RawResults:
    """Read and check one raw npz.

    Raises:
        DatasetError: The file is unreadable, lacks a key, or its arrays disagree in length.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise DatasetError(path, f"cannot read raw results: {err}") from err
    missing = [k for k in RAW_KEYS if k not in arrays]
    if missing:
        raise DatasetError(path, f"missing arrays {missing}")
    n = len(arrays["image_scores"])
    empty = np.full(n, "", dtype=str)
    arrays.setdefault("rgb_files", empty)
    arrays.setdefault("xyz_files", empty)
    arrays.setdefault("defects", empty)
    fields = (*RAW_KEYS, "rgb_files", "xyz_files", "defects")
    if any(len(arrays[k]) != n for k in fields) or arrays["anomaly_maps"].ndim != 3:
        shapes = {k: arrays[k].shape for k in fields}
        raise DatasetError(path, f"arrays disagree: {shapes}")
    return RawResults(**{k: arrays[k] for k in fields})


def select_samples(scores: np.ndarray, top_k: int) -> list[int]:
    """Indices of the ``top_k`` highest then the ``top_k`` lowest scores, without repeats."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    chosen = [*order[:top_k].tolist(), *order[::-1][:top_k].tolist()]
    return list(dict.fromkeys(int(i) for i in chosen))


def png_data_uri(img: np.ndarray, *, palette: bool = True) -> str:
    """``data:image/png;base64,...`` of a uint8 ``(H, W[, 3])`` image.

    ``palette`` stores colour images with a 256-colour palette, which halves the size of photo
    thumbnails at no visible cost and keeps a full report (9 rows x 10 categories) manageable.
    """
    picture = Image.fromarray(img)
    if palette and picture.mode == "RGB":
        picture = picture.quantize(256, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_size(shape: tuple[int, ...], max_side: int) -> tuple[int, int]:
    """``(H, W)`` scaled so that the longer side is at most ``max_side``."""
    h, w = shape[:2]
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _read_rgb(path: str) -> np.ndarray:
    """The image, through the io reader that validates it and names the file."""
    return read_rgb(Path(path))


def _read_xyz_render(path: str) -> np.ndarray:
    """A depth rendering of the organized cloud, read through the validating io reader."""
    return depth_render(read_xyz(Path(path), nan_to_zero=True))


def background_image(raw: RawResults, index: int, size: tuple[int, int]) -> np.ndarray:
    """The sample's RGB image, else a render of its xyz, else grey; resized to ``size``.

    Unreadable files are logged and replaced by grey: a report should not fail on a moved dataset.
    """
    for files, reader in ((raw.rgb_files, _read_rgb), (raw.xyz_files, _read_xyz_render)):
        name = str(files[index])
        if not name:
            continue
        try:
            return resize_image(reader(name), size)
        except (OSError, ValueError, DatasetError) as err:
            logger.warning("cannot read %s for the report: %s", name, err)
    return np.full((*size, 3), 128, dtype=np.uint8)


def _figure(raw: RawResults, index: int, limits: tuple[float, float], max_side: int) -> str:
    amap = np.asarray(raw.anomaly_maps[index], dtype=np.float32)
    size = thumbnail_size(amap.shape, max_side)
    image = background_image(raw, index, size)
    heat = draw_contour(overlay(image, amap, vmin=limits[0], vmax=limits[1]), raw.gt_masks[index])
    label = int(raw.labels[index])
    caption = (
        f"{escape(str(raw.paths[index]))}<br>score {float(raw.image_scores[index]):.4g}, "
        f"label {label} ({'defective' if label else 'good'})"
    )
    css = "anomalous" if label else "normal"
    return (
        f'<figure class="{css}"><img src="{png_data_uri(image)}" alt="image">'
        f'<img src="{png_data_uri(heat)}" alt="anomaly map"><figcaption>{caption}</figcaption></figure>'
    )


def _map_limits(maps: np.ndarray) -> tuple[float, float]:
    """Shared colour range of one category's maps, so that overlays compare across samples."""
    values = np.asarray(maps, dtype=np.float32)
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)


def colour_bar_html(limits: tuple[float, float], cmap: str = "jet") -> str:
    """The heatmaps' colour scale as an embedded PNG strip with its end values."""
    strip = png_data_uri(colour_bar(colormap_table(cmap)), palette=False)
    return (f'<div class="colourbar"><span>{limits[0]:.4g}</span><img src="{strip}" alt="colour bar">'
            f"<span>{limits[1]:.4g}</span><span>anomaly score</span></div>")


def category_section(
    raw_path: Path, category: str, *, top_k: int, max_side: int, raw: RawResults | None = None
) -> str:
    """HTML of one row on one category: the score histogram, the colour bar, and the highest-
    and lowest-scoring samples."""
    if raw is None and not raw_path.exists():
        return f"<p>{escape(category)}: no raw results ({escape(str(raw_path))}).</p>"
    raw = raw if raw is not None else load_raw(raw_path)
    limits = _map_limits(raw.anomaly_maps)
    figures = [_figure(raw, i, limits, max_side) for i in select_samples(raw.image_scores, top_k)]
    labels = np.asarray(raw.labels).astype(bool)
    scores = np.asarray(raw.image_scores, dtype=np.float64)
    histogram = histogram_svg({"good": scores[~labels], "defective": scores[labels]},
                              title=f"{category}: image scores")
    heading = (
        f"<h3>{escape(category)}</h3><p>{len(scores)} test samples; top {top_k} highest then lowest image "
        f"scores; green = ground-truth outline</p>"
    )
    return (heading + f'<div class="plots">{histogram}</div>' + colour_bar_html(limits)
            + '<div class="samples">' + "".join(figures) + "</div>")


def defect_detail_html(record: Mapping[str, Any] | None) -> str:
    """One row and category per defect type: test samples and the four metrics (good vs that type)."""
    per = dict((record or {}).get("per_defect") or {})
    if not per:
        return ""
    header = ["Defect type", "Test samples", *METRICS.values(), *PLACEBOS.values()]
    rows: list[list[Cell]] = [
        [kind, str(m.get("num_test")), *(None if m.get(k) is None else float(m[k]) for k in (*METRICS, *PLACEBOS))]
        for kind, m in sorted(per.items())
    ]
    overall = [["all", str(record.get("num_test")), *(None if record.get(k) is None else float(record[k])
                                                       for k in METRICS), *(None for _ in PLACEBOS)]]
    return html_table(header, overall + rows)


def row_section(
    raw_root: Path, name: str, categories: Sequence[str], *, top_k: int, max_side: int,
    records: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """One row: its ROC curves (one per category), then per category the per-defect metrics
    (``records`` by category) and a :func:`category_section`."""
    raws = {c: load_raw(raw_root / name / f"{c}.npz") for c in categories if (raw_root / name / f"{c}.npz").exists()}
    roc = roc_svg({c: (r.image_scores, r.labels) for c, r in raws.items()}, title=f"{row_label(name)}: ROC")
    body = "".join(
        category_section(raw_root / name / f"{c}.npz", c, top_k=top_k, max_side=max_side, raw=raws.get(c))
        + defect_detail_html((records or {}).get(c))
        for c in categories
    )
    plots = f'<div class="plots">{roc}</div>' if raws else ""
    return f"<section><h2>{escape(row_label(name))}</h2>{plots}{body}</section>"


def html_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], *, digits: int = 3) -> str:
    """An HTML table; floats with ``digits`` decimals and ``None`` as ``n/a``."""

    def cell(value: Cell) -> str:
        if value is None:
            return "n/a"
        return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables_html(records: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        f"<h2>{escape(label)}</h2>" + html_table(*metric_table(records, key))
        for key, label in METRICS.items()
    ]
    parts.append("<h2>Test samples per row</h2>" + html_table(*count_table(records)))
    if defect_types(records):
        parts.append("<h2>Per defect type</h2><p>Each defect type against the good test samples only; "
                     "the mean over the categories that have the type.</p>"
                     "<h3>Test samples</h3>" + html_table(*defect_count_table(records)))
        parts += [f"<h3>{escape(label)} per defect type</h3>" + html_table(*defect_table(records, key))
                  for key, label in METRICS.items()]
        parts.append(f"<p>The {escape(PLACEBO_NOTE)}.</p>")
        parts += [f"<h3>{escape(label)} per defect type</h3>" + html_table(*defect_table(records, key))
                  for key, label in PLACEBOS.items()]
    return "".join(parts)


def _timings_html(records: Sequence[Mapping[str, Any]]) -> str:
    if not any("fit_seconds" in r or "ms_per_sample" in r for r in records):
        return ""
    return ("<h2>Timing</h2><p>Machine-dependent (see the run metadata); kept apart from the metrics.</p>"
            + html_table(*timing_table(records), digits=2))


def run_info_html(info: Mapping[str, Any] | None) -> str:
    """The run metadata (dataset, seed, versions, machine, sample counts per split) as tables."""
    if not info:
        return ""
    keys = ("dataset", "preset", "seed", "device", "cmdiad_version", "torch", "numpy", "python", "machine",
            "cpu", "cpu_count", "platform", "started", "finished", "resumed_rows")
    rows = [[k, str(info[k])] for k in keys if k in info]
    parts = ["<h2>Run</h2>" + html_table(["Field", "Value"], rows)]
    samples = info.get("samples") or {}
    if samples:
        splits = ("train", "validation", "test")
        if any("validation_labelled" in counts for counts in samples.values()):
            splits = ("train", "validation", "validation_labelled", "test")
        table = [[c, *(str(counts.get(s, "")) for s in splits)] for c, counts in sorted(samples.items())]
        parts.append("<h3>Samples per split</h3>" + html_table(["Category", *splits], table))
    return "".join(parts)


def _pixel_fusion_html(records: Sequence[Mapping[str, Any]]) -> str:
    """Per MTFI row and category, the pixel fusion its fit chose on labelled validation parts
    (``fusion.labelled_choice``), with each setting's mean P-AUROC over their defect types (n/a
    for a setting that row did not try: a label-free setting outside the usual candidates is
    tried only where it was the label-free one)."""
    chosen = [r for r in records if r.get("pixel_fusion")]
    if not chosen:
        return ""
    names = list(dict.fromkeys(n for r in chosen for n in r["pixel_fusion"]["p_auroc"]))
    order = ordered_rows(records)

    def mean_p(r: Mapping[str, Any], name: str) -> float | None:
        per_type = r["pixel_fusion"]["p_auroc"].get(name)
        return None if per_type is None else float(np.mean(list(per_type.values())))

    rows = [[row_label(row_name(r)), str(r["category"]), r["pixel_fusion"]["chosen"], r["pixel_fusion"]["label_free"],
             r["pixel_fusion"]["labelled_parts"], *(mean_p(r, n) for n in names)]
            for r in sorted(chosen, key=lambda r: (order.index(row_name(r)), str(r["category"])))]
    note = ("<p>How each MTFI row's hallucinated anomaly map enters its pixel fusion, chosen on the labelled "
            "defective validation parts: the setting with the best mean P-AUROC over their defect types "
            "(good pixels: the good validation parts).</p>")
    header = ["Row", "Category", "Chosen", "Label-free", "Labelled parts", *(f"P-AUROC: {n}" for n in names)]
    return "<h2>Pixel fusion chosen on labelled parts</h2>" + note + html_table(header, rows)


def _recommendation_html(records: Sequence[Mapping[str, Any]]) -> str:
    """The closing section: per category, the best row for each sensor set (:mod:`cmdiad.viz.recommend`)."""
    from cmdiad.viz.recommend import BANK_MARGIN, recommendation_table

    header, rows = recommendation_table(records)
    if not rows:
        return ""
    note = ("<p>Per category and set of sensors a line could run at inference, the row with the highest "
            "mean of I-AUROC and of the skill of P-AUROC and AUPRO@30% over their placebo, averaged over the "
            "defect types: (metric - placebo) / (1 - placebo), the placebo being what the map's spatial prior "
            "alone scores, so 0 means the map only knows where the part is and 1 that it is perfect (the raw "
            "metrics rank where a record has no placebo). Shown with its raw metrics, its I-AUROC and its "
            "P-AUROC skill per defect type (test/good against that type) and its time per sample. A map that only "
            "lifts the whole part gains raw pixel metrics without finding a defect, and no skill. The placebo "
            "is approximate (on generated parts off by up to 0.2 in P-AUROC in one category). A row with a "
            f"second stream is recommended over its sensors' own bank when its merit is higher by more than "
            f"{BANK_MARGIN:g}: on generated parts, rows that saw nothing more than their bank led it by up to "
            "0.05 through the placebo's error, while rows that saw more led it by 0.003 to 0.04. The last "
            "column names the best such row and its merit minus the bank's.</p>")
    return f"<h2>Which sensors to deploy</h2>{note}" + html_table(header, rows)


def write_html_report(
    out_dir: Path | str,
    records: Sequence[Mapping[str, Any]],
    raw_dir: Path | str,
    *,
    top_k: int = 3,
    title: str = "cmdiad results",
    command: str = "",
    max_side: int = 160,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html``: the metric and timing tables, then per row and category the
    overlays of the ``top_k`` highest- and lowest-scoring test samples.

    Args:
        out_dir: Folder for report.html, created when missing.
        records: Result records (see :mod:`cmdiad.viz.report`).
        raw_dir: Folder holding ``<row>/<category>.npz`` raw results.
        top_k: Samples shown at each end of the score ranking.
        title: Page title.
        command: The command that produced the results, shown under the tables when given.
        max_side: Longest side of each thumbnail in pixels.
        run_info: The run metadata (run.json), shown first when given.

    Returns:
        The path of report.html.
    """
    raw_root = Path(raw_dir)
    sections = []
    for name in ordered_rows(records):
        categories = sorted({str(r["category"]) for r in records if row_name(r) == name})
        mine = {str(r["category"]): r for r in records if row_name(r) == name}
        sections.append(row_section(raw_root, name, categories, top_k=top_k, max_side=max_side, records=mine))
    provenance = f"<h2>Command</h2><pre>{escape(command)}</pre>" if command else ""
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"{run_info_html(run_info)}{_tables_html(records)}{_pixel_fusion_html(records)}{_timings_html(records)}"
        f"{provenance}"
        f"{''.join(sections)}{_recommendation_html(records)}</body></html>\n"
    )
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, page)
    logger.info("wrote %s (%d bytes)", path, len(page))
    return path
