"""Writing per-sample predictions: score, pass/fail, heatmaps, JSON and CSV summaries.

Bad files are reported one by one (path and reason) and the other samples are still scored;
a model set scores a sample whose one file is bad with the other modality.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cmdiad.errors import DatasetError
from cmdiad.io.atomic import atomic_write_text
from cmdiad.io.image import read_rgb, rgb_file_size
from cmdiad.io.pointcloud import read_xyz, xyz_file_size
from cmdiad.pipeline.encoder import Progress
from cmdiad.pipeline.inputs import Item
from cmdiad.pipeline.routing import Router
from cmdiad.types import SampleRecord
from cmdiad.viz.heatmaps import annotate, calibrated_scale, depth_render, overlay, save_png

log = logging.getLogger(__name__)

FIELDS = ("sample", "split", "defect", "route", "score", "threshold", "anomalous", "rgb", "xyz", "heatmaps", "error")
OUTPUT_ENTRIES = frozenset({"predictions.json", "predictions.csv", "heatmaps"})
"""What ``predict`` writes into its output folder."""


@dataclass
class Outcome:
    """What predict did: one row per sample and every bad file with its reason."""

    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def scored(self) -> int:
        """How many samples got a score."""
        return sum(r["score"] is not None for r in self.rows)


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder other than an earlier predict output.

    Raises:
        DatasetError: Naming ``out``; ``overwrite`` accepts a folder with other files (they are kept).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "exists and is a file; give a folder for --out")
    others = {p.name for p in out.iterdir()} - OUTPUT_ENTRIES if out.is_dir() else set()
    if others and not overwrite:
        raise DatasetError(out, f"is not empty and not an earlier predict output ({', '.join(sorted(others)[:3])}...); "
                           "choose another --out, or give --overwrite to replace the predictions in it")


def clear_output(out: Path) -> None:
    """Remove an earlier run's predictions and heatmaps from ``out`` (nothing else)."""
    out = Path(out)
    for name in OUTPUT_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.~-]+", "_", text).strip("_")[-120:]


def _screen(rec: SampleRecord) -> tuple[SampleRecord | None, list[tuple[str, str]]]:
    """Cheap checks of a record's files: the record without its bad files, and the problems."""
    problems, sizes = [], {}
    for m, size_of in (("rgb", rgb_file_size), ("xyz", xyz_file_size)):
        path = rec.path_of(m)
        if path is not None:
            try:
                sizes[m] = size_of(path, verify=True)
            except DatasetError as exc:
                problems.append((str(exc.path), exc.problem))
    if len(sizes) == 2 and sizes["rgb"] != sizes["xyz"]:
        problems.append((str(rec.rgb_path), f"rgb size {sizes['rgb']} differs from xyz size {sizes['xyz']} of "
                                            f"{rec.xyz_path}"))
        return None, problems
    if not sizes:
        return None, problems
    return _keep(rec, set(sizes)), problems


def _keep(rec: SampleRecord, modalities: set[str]) -> SampleRecord:
    return replace(rec, rgb_path=rec.rgb_path if "rgb" in modalities else None,
                   xyz_path=rec.xyz_path if "xyz" in modalities else None)


class _Scoring:
    """Routes and scores usable records; a file that fails its full read drops that modality once."""

    def __init__(self, router: Router, outcome: Outcome, errors: dict[int, list[str]]) -> None:
        self.router, self.outcome, self.errors = router, outcome, errors

    def _fail(self, i: int, exc: DatasetError) -> None:
        self.outcome.problems.append((str(exc.path), exc.problem))
        self.errors.setdefault(i, []).append(f"{exc.path}: {exc.problem}")

    def run(self, records: list[SampleRecord | None]) -> dict[int, tuple]:
        """``index -> (route, scores, record scored)`` for every record that was routed."""
        idx = [i for i, r in enumerate(records) if r is not None]
        failed: dict[int, DatasetError] = {}
        scored = self.router.score([records[i] for i in idx], on_error=lambda j, exc: failed.setdefault(idx[j], exc))
        results = {idx[j]: (route, scores, records[idx[j]]) for route, scores, j in scored}
        for i, exc in failed.items():
            self._fail(i, exc)
            rec = records[i]
            rest = {m for m in rec.modalities if rec.path_of(m) != exc.path}
            results[i] = (None, None, None)
            if rest and rest != set(rec.modalities):
                fewer = _keep(rec, rest)
                route, scores, _ = self.router.score([fewer], on_error=lambda _, e, i=i: self._fail(i, e))[0]
                results[i] = (route, scores, fewer)
        return results


def predict(router: Router, items: Sequence[Item], out: Path, *, progress: Progress | None = None) -> Outcome:
    """Score ``items`` with ``router`` and write results under ``out`` (already checked and cleared).

    Writes ``predictions.json``, ``predictions.csv`` and ``heatmaps/<name>_{rgb,depth}.png``:
    the anomaly map over the RGB image and over a depth render of the cloud, coloured on the
    model's calibrated scale, with the score, threshold, PASS/FAIL and a colour bar.

    Returns:
        One row per item, in input order (``score`` None where it could not be scored, with
        the reason in ``error``), and the bad files.
    """
    out = Path(out)
    outcome = Outcome()
    errors: dict[int, list[str]] = {}
    records: list[SampleRecord | None] = []
    for i, item in enumerate(items):
        rec, problems = _screen(item.record)
        outcome.problems += problems
        if problems:
            errors[i] = [f"{p}: {why}" for p, why in problems]
        records.append(rec)
    results = _Scoring(router, outcome, errors).run(records)
    for i, item in enumerate(items):
        route, scores, used = results.get(i, (None, None, None))
        outcome.rows.append(_row(item, used, route, scores, router, errors.get(i, []), out))
        if progress is not None:
            progress("heatmaps", i + 1, len(items))
    _write_tables(out, outcome.rows)
    return outcome


def _row(item: Item, used: SampleRecord | None, route, scores, router: Router, errors: list[str], out: Path) -> dict:
    """The prediction row of one item; writes its heatmaps when it was scored."""
    rec = item.record
    row = {"sample": item.name, "split": rec.split, "defect": rec.defect, "route": route, "score": None,
           "threshold": None, "anomalous": None, "rgb": str(rec.rgb_path or ""), "xyz": str(rec.xyz_path or ""),
           "heatmaps": [], "error": "; ".join(errors)}
    if route is None or scores is None or used is None:
        if used is not None and not row["error"]:
            row["error"] = f"the model has no detector for a sample with only {'/'.join(sorted(used.modalities))}"
        return row
    det = router.detectors[route]
    score = float(scores.image_score[0])
    row.update(score=score, threshold=det.threshold,
               anomalous=None if det.threshold is None else bool(score > det.threshold))
    row["heatmaps"] = _heatmaps(used, item.name, scores.anomaly_map[0].numpy(), det, score, out)
    return row


def _heatmaps(rec: SampleRecord, name: str, amap: np.ndarray, det, score: float, out: Path) -> list[str]:
    scale = calibrated_scale(getattr(det, "map_calibration", None), amap)
    backgrounds = []
    if rec.rgb_path is not None:
        backgrounds.append(("rgb", read_rgb(rec.rgb_path)))
    if rec.xyz_path is not None:
        backgrounds.append(("depth", depth_render(read_xyz(rec.xyz_path))))
    written = []
    for kind, image in backgrounds:
        path = out / "heatmaps" / f"{_safe(name.replace('/', '_'))}_{kind}.png"
        blended = overlay(image, amap, vmin=scale[0], vmax=scale[2], good_level=scale[1])
        save_png(path, annotate(blended, scale=scale, score=score, threshold=det.threshold))
        written.append(str(path.relative_to(out)))
    return written


def _write_tables(out: Path, rows: list[dict]) -> None:
    atomic_write_text(out / "predictions.json", json.dumps(rows, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "heatmaps": ";".join(row["heatmaps"])})
    atomic_write_text(out / "predictions.csv", buf.getvalue())
