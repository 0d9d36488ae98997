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
from cmdiad.viz.heatmaps import depth_render, draw_contour, overlay, resize_image
from cmdiad.viz.report import (
    METRICS,
    Cell,
    atomic_write_text,
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
    """

    image_scores: np.ndarray
    labels: np.ndarray
    anomaly_maps: np.ndarray
    gt_masks: np.ndarray
    paths: np.ndarray
    rgb_files: np.ndarray
    xyz_files: np.ndarray


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
    fields = (*RAW_KEYS, "rgb_files", "xyz_files")
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
    # The io readers validate and name the file; viz falls back to plain readers without them.
    try:
        from cmdiad.io.image import read_rgb
    except ImportError:
        return np.asarray(Image.open(path).convert("RGB"))
    return read_rgb(Path(path))


def _read_xyz_render(path: str) -> np.ndarray:
    try:
        from cmdiad.io.pointcloud import read_xyz
    except ImportError:
        import tifffile

        return depth_render(np.asarray(tifffile.imread(path), dtype=np.float32))
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


def category_section(raw_path: Path, category: str, *, top_k: int, max_side: int) -> str:
    """HTML of the highest- and lowest-scoring samples of one row on one category."""
    if not raw_path.exists():
        return f"<p>{escape(category)}: no raw results ({escape(str(raw_path))}).</p>"
    raw = load_raw(raw_path)
    limits = _map_limits(raw.anomaly_maps)
    figures = [_figure(raw, i, limits, max_side) for i in select_samples(raw.image_scores, top_k)]
    heading = (
        f"<h3>{escape(category)}</h3><p>top {top_k} highest then lowest image scores; "
        f"colour range {limits[0]:.4g} to {limits[1]:.4g}; green = ground-truth outline</p>"
    )
    return heading + '<div class="samples">' + "".join(figures) + "</div>"


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
    parts.append("<h2>Timing</h2>" + html_table(*timing_table(records), digits=2))
    return "".join(parts)


def write_html_report(
    out_dir: Path | str,
    records: Sequence[Mapping[str, Any]],
    raw_dir: Path | str,
    *,
    top_k: int = 3,
    title: str = "cmdiad results",
    command: str = "",
    max_side: int = 160,
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

    Returns:
        The path of report.html.
    """
    raw_root = Path(raw_dir)
    sections = []
    for name in ordered_rows(records):
        categories = sorted({str(r["category"]) for r in records if row_name(r) == name})
        body = "".join(
            category_section(raw_root / name / f"{c}.npz", c, top_k=top_k, max_side=max_side)
            for c in categories
        )
        sections.append(f"<section><h2>{escape(row_label(name))}</h2>{body}</section>")
    provenance = f"<h2>Command</h2><pre>{escape(command)}</pre>" if command else ""
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"{_tables_html(records)}{provenance}{''.join(sections)}</body></html>\n"
    )
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, page)
    logger.info("wrote %s (%d bytes)", path, len(page))
    return path
