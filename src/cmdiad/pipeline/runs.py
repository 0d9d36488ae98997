"""The paper's experiment: every row on every category, with raw outputs and reports."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cmdiad.config import ExperimentConfig, to_dict
from cmdiad.errors import DatasetError
from cmdiad.features.cache import FeatureCache
from cmdiad.io.atomic import atomic_path, atomic_write_text
from cmdiad.io.mvtec3d import list_categories, list_records, load_sample
from cmdiad.metrics.per_defect import evaluate_record
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.encoder import Encoder, Progress
from cmdiad.pipeline.mtfi import DESIGNS, Hallucinator
from cmdiad.pipeline.outputs import check_output, run_metadata
from cmdiad.pipeline.persist import build_encoder, load_hallucinator
from cmdiad.pipeline.streams import ALL_ROWS, needed_modalities, parse_row
from cmdiad.types import SampleRecord, Scores
from cmdiad.viz.html import write_html_report
from cmdiad.viz.report import load_records, plain, row_name, write_results

log = logging.getLogger(__name__)


def category_splits(
    root: Path, category: str, *, with_validation: bool, skip_bad: bool = False
) -> tuple[list, list, list]:
    """``(train, validation, test)`` records of a category.

    The validation records include labelled defective parts where the dataset has any
    (``validation/<defect>/``); ``with_validation`` adds only the good ones to training.
    With ``skip_bad``, every sample is read once up front and unreadable or malformed ones
    are dropped with a warning (``data.skip_bad_samples``); otherwise the first bad file
    stops the run with an error naming it.
    """
    splits = [list_records(root, category, s) for s in ("train", "validation", "test")]
    if skip_bad:
        splits = [[r for r in recs if load_sample(r, skip_bad=True) is not None] for recs in splits]
    train, val, test = splits
    if with_validation:
        train = train + [r for r in val if r.label == 0]
    return train, val, test


def split_counts(splits: tuple[list, list, list]) -> dict[str, int]:
    """Samples per split; labelled defective validation parts (which choose, never train) on their own."""
    counts = dict(zip(("train", "validation", "test"), map(len, splits), strict=True))
    if labelled := sum(r.label for r in splits[1]):
        counts["validation"] -= labelled
        counts["validation_labelled"] = labelled
    return counts


def usable_test(test: Sequence[SampleRecord], modalities: Sequence[str], where: str) -> list[SampleRecord]:
    """The test records that have every modality a row needs; the others are named in a warning.

    Rows needing different modalities may so score different subsets; the record's ``num_test``
    (and ``num_left_out``) makes that visible next to the numbers.
    """
    need = set(modalities)
    keep = [r for r in test if need <= r.modalities]
    left = [r for r in test if not need <= r.modalities]
    if left:
        named = ", ".join(
            f"{r.key} ({r.rgb_path or r.xyz_path or r.gt_path}: no {'/'.join(sorted(need - r.modalities))})"
            for r in left)
        log.warning("%s: %d of %d test samples left out for lacking a modality this row needs: %s",
                    where, len(left), len(test), named)
    log.info("%s: scoring %d test samples", where, len(keep))
    return keep


def raw_arrays(recs: Sequence[SampleRecord], scores: Scores, masks: torch.Tensor) -> dict[str, np.ndarray]:
    """The arrays of ``raw/<row>/<category>.npz``: the metrics are computed from exactly these.

    Maps are kept as float32 (what the detector gives), so nothing is lost in the file.
    """
    return {
        "image_scores": scores.image_score.detach().cpu().numpy().astype(np.float64),
        "labels": np.array([r.label for r in recs], dtype=np.int64),
        "anomaly_maps": scores.anomaly_map.detach().cpu().numpy().astype(np.float32),
        "gt_masks": masks.detach().cpu().numpy().astype(bool),
        "defects": np.array([r.defect for r in recs], dtype=str),
        "paths": np.array([r.key for r in recs], dtype=str),
        "rgb_files": np.array([str(r.rgb_path or "") for r in recs], dtype=str),
        "xyz_files": np.array([str(r.xyz_path or "") for r in recs], dtype=str),
    }


def _save_raw(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def run_row(
    row: str, cfg: ExperimentConfig, encoder: Encoder, splits, *, out: Path, category: str,
    progress: Progress | None = None, shared_banks: dict | None = None, pooled: PooledDistiller | None = None,
) -> dict:
    """Fit and evaluate one row on one category; writes ``raw/<row>/<category>.npz``.

    With ``pooled``, the row's distiller was trained once on every category; its training time is
    shared out evenly over the categories in ``fit_seconds``.

    Returns:
        The record: method, main, category, ``num_test``, ``num_left_out``, the overall metrics,
        ``per_defect`` and the timings.
    """
    method, main = parse_row(row)
    dcfg = replace(cfg.detector, method=method, main=main)
    torch.manual_seed(dcfg.seed)
    train, val, test = splits
    det = Detector(dcfg, encoder, device=cfg.device, shared_banks=shared_banks,
                   hallucinator=pooled.hallucinator if pooled is not None else None)
    fit = det.fit(train, validation=val, threshold_frr=cfg.threshold_frr, progress=progress)
    if pooled is not None:
        fit.fit_seconds += pooled.seconds_per_category
    modalities = needed_modalities(dcfg)
    usable = usable_test(test, modalities, f"{row}/{category}")
    t0 = time.perf_counter()
    scores = det.score(usable, progress=progress)
    score_ms = 1000 * (time.perf_counter() - t0) / max(len(usable), 1)
    arrays = raw_arrays(usable, scores, encoder.masks(usable))
    _save_raw(out / "raw" / row / f"{category}.npz", arrays)
    metrics = evaluate_record(arrays["image_scores"], arrays["labels"], arrays["anomaly_maps"], arrays["gt_masks"],
                              arrays["defects"], cfg.metrics.aupro_mode, where=f"{row}/{category}")
    extract_ms = sum(encoder.ms_per_sample.get(m, 0.0) for m in modalities)
    fidelity = {f"fidelity_{k}": v for k, v in (fit.fidelity or {}).items() if k != "patches"}
    chosen = {"pixel_fusion": fit.pixel_fusion} if fit.pixel_fusion else {}  # from labelled validation parts
    if fit.pixel_setting:
        chosen["pixel_setting"] = fit.pixel_setting
    return plain({"method": method, "main": main, "category": category, "num_left_out": len(test) - len(usable),
                  **metrics, **fidelity, **chosen, "fit_seconds": fit.fit_seconds,
                  "ms_per_sample": score_ms + extract_ms})


@dataclass
class PooledDistiller:
    """One row's distiller trained on the training samples of every category (``distill.pooled``)."""

    hallucinator: Hallucinator
    seconds_per_category: float


def pooled_distillers(
    cfg: ExperimentConfig, encoder: Encoder, train: dict[str, list[SampleRecord]], rows: Sequence[str], out: Path,
    progress: Progress | None = None,
) -> dict[str, PooledDistiller]:
    """Train (or, on a resumed run, load) one distiller per MTFI row over all categories' ``train``.

    Each is saved once under ``out/distillers/<row>/`` and reused by the detector of every category.
    """
    everything = [r for recs in train.values() for r in recs]
    result = {}
    for row in rows:
        method, main = parse_row(row)
        if method not in DESIGNS:
            continue
        dcfg = replace(cfg.detector, method=method, main=main)
        det = Detector(dcfg, encoder, device=cfg.device)
        folder = out / "distillers" / row
        t0 = time.perf_counter()
        if (folder / "pooled.json").is_file():
            det.hallucinator = load_hallucinator(dcfg, folder, encoder, device=cfg.device)
            seconds = json.loads((folder / "pooled.json").read_text(encoding="utf-8"))["seconds"]
        else:
            torch.manual_seed(dcfg.seed)
            count, _ = det.train_distiller(everything, progress)
            seconds = time.perf_counter() - t0
            det.hallucinator.save(folder)
            meta = {"row": row, "categories": sorted(train), "paired_samples": count, "seconds": seconds}
            atomic_write_text(folder / "pooled.json", json.dumps(meta, indent=2) + "\n")
            log.info("%s: pooled distiller trained on %d samples of %d categories", row, count, len(train))
        result[row] = PooledDistiller(det.hallucinator, seconds / max(len(train), 1))
    return result


def _extract_all(encoder: Encoder, splits, rows: Sequence[str], progress: Progress | None) -> None:
    """Fill the feature cache for every sample and modality the rows use."""
    modalities: set[str] = set()
    for row in rows:
        method, _ = parse_row(row)
        modalities |= {method} if method in ("rgb", "xyz") else {"rgb", "xyz"}  # dual and MTFI train on both
    records = {r.key: r for split in splits for r in split}.values()
    for m in sorted(modalities):
        have = [r for r in records if m in r.modalities]
        encoder.features(have, m, progress)
        if m not in encoder.ms_per_sample and have:  # all cached: time a few samples anyway
            encoder.measure(have[: encoder.batch_size], m)


def check_inputs(root: Path, cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """``(categories, rows)`` of a run, checked before anything is built or written.

    Raises:
        DatasetError: ``root`` is not a dataset folder, or a category is not in it (the message
            lists the categories it has).
        ConfigError: A row name is unknown.
    """
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    found = list_categories(root)
    unknown = [c for c in cfg.categories if c not in found]
    if unknown:
        raise DatasetError(root, f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                                 f"this dataset has: {', '.join(found)}")
    rows = list(cfg.rows) or list(ALL_ROWS)
    for row in rows:
        parse_row(row)
    return list(cfg.categories) or found, rows


def _pooled(root: Path, cfg: ExperimentConfig, encoder: Encoder, categories: Sequence[str], rows: Sequence[str],
            out: Path, progress: Progress | None) -> dict[str, PooledDistiller]:
    """The pooled distillers of the run, or none when ``distill.pooled`` is off."""
    if not cfg.detector.distill.pooled:
        return {}
    data = cfg.detector.data
    train = {c: category_splits(root, c, with_validation=data.train_with_validation,
                                skip_bad=data.skip_bad_samples)[0] for c in categories}
    return pooled_distillers(cfg, encoder, train, rows, out, progress)


def finished_rows(out: Path) -> dict[tuple[str, str], dict]:
    """``{(row, category): record}`` already done in ``out``: a record and its raw npz are both there."""
    return {(row_name(r), str(r["category"])): r for r in load_records(out)
            if (out / "raw" / row_name(r) / f"{r['category']}.npz").is_file()}


def run_experiment(
    root: Path,
    out: Path,
    cfg: ExperimentConfig,
    *,
    cache_dir: Path | None = None,
    command: str = "",
    progress: Progress | None = None,
    on_record: Callable[[dict], None] | None = None,
    overwrite: bool = False,
    run_info: dict | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run the rows of ``cfg`` on every category of the dataset at ``root``.

    Inputs are checked before anything is created. A folder with results of the same
    configuration is resumed (rows whose record and raw file exist are not recomputed, and
    ``on_resume`` gets their count); one of another configuration is refused unless
    ``overwrite``. Results are written after every row, so an interrupted run loses at most the
    row in progress; ``report.html`` is written at the end.

    Args:
        run_info: Extra run.json entries (e.g. the preset name).

    Returns:
        The records of this run's rows and categories (resumed ones included).

    Raises:
        DatasetError: See :func:`check_inputs`.
        ConfigError: ``out`` holds results of another configuration.
    """
    root, out = Path(root), Path(out)
    categories, rows = check_inputs(root, cfg)
    resolved = to_dict(cfg)
    check_output(out, resolved, root, overwrite=overwrite)
    done = finished_rows(out)
    todo = [(c, r) for c in categories for r in rows]
    resumed = sum((r, c) in done for c, r in todo)
    if resumed and on_resume is not None:
        on_resume(resumed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(resolved, indent=2) + "\n")
    info = run_metadata(root, seed=cfg.detector.seed, device=cfg.device, command=command,
                        extra={**(run_info or {}), "resumed_rows": resumed, "samples": {}})
    if (info.get("synthetic") or {}).get("null_twins"):
        log.warning("%s holds null twins: its defective parts are rendered without their defects, so every "
                    "per-defect metric of this run is a map's prior (cmdiad synth --null-twins)", root)
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")
    records = _run_categories(root, out, cfg, categories, rows, done, info, cache_dir=cache_dir,
                              progress=progress, on_record=on_record)
    info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")
    if progress is not None:
        progress("report.html", 0, 1)
    write_html_report(out, load_records(out), out / "raw", title=f"cmdiad experiment on {root}",
                      command=command, run_info=info)
    if progress is not None:
        progress("report.html", 1, 1)
    return records


def _run_categories(
    root: Path, out: Path, cfg: ExperimentConfig, categories: Sequence[str], rows: Sequence[str],
    done: dict[tuple[str, str], dict], info: dict, *, cache_dir: Path | None, progress: Progress | None,
    on_record: Callable[[dict], None] | None,
) -> list[dict]:
    """The category loop of :func:`run_experiment`: rows in ``done`` are taken as they are."""
    encoder: Encoder | None = None  # built on the first row to compute: a fully resumed run builds nothing
    pooled: dict[str, PooledDistiller] | None = None
    resolved, records, data = to_dict(cfg), [], cfg.detector.data
    for category in categories:
        splits = category_splits(root, category, with_validation=data.train_with_validation,
                                 skip_bad=data.skip_bad_samples)
        info["samples"][category] = split_counts(splits)
        atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")
        if all((row, category) in done for row in rows):
            records += [done[(row, category)] for row in rows]
            continue
        if encoder is None:
            encoder = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(cache_dir))
        _extract_all(encoder, splits, rows, progress)  # so fit_seconds never include extraction
        if pooled is None:
            pooled = _pooled(root, cfg, encoder, categories, rows, out, progress)
        shared: dict = {}  # real-modality banks, built once per category
        for k, row in enumerate(rows):
            if progress is not None:
                progress(f"rows of {category}", k, len(rows))
            if (row, category) in done:
                records.append(done[(row, category)])
                continue
            log.info("%s: %s", category, row)
            rec = run_row(row, cfg, encoder, splits, out=out, category=category, progress=progress,
                          shared_banks=shared, pooled=pooled.get(row))
            records.append(rec)
            write_results(out, [rec], config=resolved)
            if on_record is not None:
                on_record(rec)
        if progress is not None:
            progress(f"rows of {category}", len(rows), len(rows))
    return records
