"""The paper's experiment: every row on every category, with raw outputs and reports."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cmdiad.config import ExperimentConfig, to_dict
from cmdiad.features.cache import FeatureCache
from cmdiad.io.mvtec3d import list_categories, list_records, load_sample
from cmdiad.metrics.segmentation import evaluate
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.encoder import Encoder, Progress
from cmdiad.pipeline.persist import build_encoder
from cmdiad.pipeline.streams import ALL_ROWS, needed_modalities, parse_row
from cmdiad.types import SampleRecord
from cmdiad.viz.report import load_records, merge_records, write_html_report, write_results

log = logging.getLogger(__name__)


def category_splits(
    root: Path, category: str, *, with_validation: bool, skip_bad: bool = False
) -> tuple[list, list, list]:
    """``(train, validation, test)`` records of a category.

    With ``skip_bad``, every sample is read once up front and unreadable or malformed ones
    are dropped with a warning (``data.skip_bad_samples``); otherwise the first bad file
    stops the run with an error naming it.
    """
    splits = [list_records(root, category, s) for s in ("train", "validation", "test")]
    if skip_bad:
        splits = [[r for r in recs if load_sample(r, skip_bad=True) is not None] for recs in splits]
    train, val, test = splits
    if with_validation:
        train = train + val
    return train, val, test


def _save_raw(path: Path, recs: Sequence[SampleRecord], scores, labels, masks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        image_scores=scores.image_score.numpy().astype(np.float64),
        labels=labels.astype(np.int64),
        anomaly_maps=scores.anomaly_map.numpy().astype(np.float16),
        gt_masks=masks.numpy().astype(bool),
        paths=np.array([r.key for r in recs]),
        rgb_files=np.array([str(r.rgb_path or "") for r in recs]),
        xyz_files=np.array([str(r.xyz_path or "") for r in recs]),
    )
    tmp.replace(path)


def run_row(
    row: str, cfg: ExperimentConfig, encoder: Encoder, splits, *, out: Path, category: str,
    progress: Progress | None = None, shared_banks: dict | None = None,
) -> dict:
    """Fit and evaluate one row on one category; writes ``raw/<row>/<category>.npz``."""
    method, main = parse_row(row)
    dcfg = replace(cfg.detector, method=method, main=main)
    torch.manual_seed(dcfg.seed)
    train, val, test = splits
    det = Detector(dcfg, encoder, device=cfg.device, shared_banks=shared_banks)
    fit = det.fit(train, validation=val, threshold_frr=cfg.threshold_frr, progress=progress)
    modalities = needed_modalities(dcfg)
    test = [r for r in test if set(modalities) <= r.modalities]
    t0 = time.perf_counter()
    scores = det.score(test, progress=progress)
    score_ms = 1000 * (time.perf_counter() - t0) / max(len(test), 1)
    labels = np.array([r.label for r in test])
    masks = encoder.masks(test)
    _save_raw(out / "raw" / row / f"{category}.npz", test, scores, labels, masks)
    metrics = _metrics(scores, labels, masks, cfg, f"{row}/{category}")
    extract_ms = sum(encoder.ms_per_sample.get(m, 0.0) for m in modalities)
    return {"method": method, "main": main, "category": category, **metrics,
            "fit_seconds": fit.fit_seconds, "ms_per_sample": score_ms + extract_ms}


def _metrics(scores, labels, masks, cfg: ExperimentConfig, where: str) -> dict:
    try:
        return evaluate(scores.image_score.numpy(), labels, scores.anomaly_map.numpy(), masks.numpy(),
                        mode=cfg.metrics.aupro_mode)
    except ValueError as exc:
        log.warning("%s: metrics undefined (%s)", where, exc)
        return {k: math.nan for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_1")}


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


def run_experiment(
    root: Path,
    out: Path,
    cfg: ExperimentConfig,
    *,
    cache_dir: Path | None = None,
    command: str = "",
    progress: Progress | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the rows of ``cfg`` on every category of the dataset at ``root``.

    Results are written after every row (``results.json/.csv/.md``), so nothing already
    computed is lost if a later row fails; ``report.html`` is written at the end.

    Returns:
        The records of this run.
    """
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = list(cfg.categories) or list_categories(root)
    rows = list(cfg.rows) or list(ALL_ROWS)
    resolved = to_dict(cfg)
    (out / "config.json").write_text(json.dumps(resolved, indent=2), encoding="utf-8")
    encoder = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(cache_dir))
    records: list[dict] = []
    existing = load_records(out)
    for category in categories:
        data = cfg.detector.data
        splits = category_splits(root, category, with_validation=data.train_with_validation,
                                 skip_bad=data.skip_bad_samples)
        _extract_all(encoder, splits, rows, progress)  # so fit_seconds never include extraction
        shared: dict = {}  # real-modality banks, built once per category
        for row in rows:
            log.info("%s: %s", category, row)
            rec = run_row(row, cfg, encoder, splits, out=out, category=category, progress=progress,
                          shared_banks=shared)
            records.append(rec)
            existing = merge_records(existing, [rec])
            write_results(out, existing, command=command, config=resolved)
            if on_record is not None:
                on_record(rec)
    write_html_report(out, existing, out / "raw", title=f"cmdiad experiment on {root}")
    return records
