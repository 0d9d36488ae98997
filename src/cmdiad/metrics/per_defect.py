"""Metrics per defect type: test/good against one defect type at a time (issue #10.1).

A category's test set mixes several defect types (``SampleRecord.defect``). The overall record
hides which of them a method misses, so each type is also scored on its own: the good test
samples plus the samples of that type only. I-AUROC then ranks that type against good, P-AUROC
uses the pixels of those samples, and AU-PRO the regions of that type. Beside them, each type
gets the placebo of its pixel metrics (:mod:`cmdiad.metrics.placebo`): what the map scores at
that type's masks laid on the good parts, i.e. what its spatial prior alone gives.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from cmdiad.metrics.classification import to_numpy
from cmdiad.metrics.placebo import placebo_per_defect
from cmdiad.metrics.segmentation import evaluate

logger = logging.getLogger(__name__)

GOOD = "good"
METRIC_KEYS: tuple[str, ...] = ("i_auroc", "p_auroc", "aupro_30", "aupro_1")


def evaluate_or_nan(
    image_scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray,
    mode: str = "exact", *, where: str = "",
) -> dict[str, float]:
    """:func:`~cmdiad.metrics.segmentation.evaluate`, with NaN metrics (and a warning) when undefined.

    A metric is undefined when the subset lacks a class (no good or no defective sample) or GT regions.
    """
    try:
        return evaluate(image_scores, labels, maps, masks, mode=mode)
    except ValueError as exc:
        logger.warning("%s: metrics undefined (%s)", where or "metrics", exc)
        return dict.fromkeys(METRIC_KEYS, math.nan)


def evaluate_per_defect(
    image_scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    defects: np.ndarray | list[str],
    mode: str = "exact",
    *,
    where: str = "",
) -> dict[str, dict[str, float | int]]:
    """Metrics of every defect type against the good test samples.

    Args:
        image_scores: ``(N,)`` image scores.
        labels: ``(N,)`` 1 = defective.
        maps: ``(N, H, W)`` anomaly maps.
        masks: ``(N, H, W)`` ground truth.
        defects: ``(N,)`` defect type of each sample; ``"good"`` for normal ones.
        mode: AU-PRO mode (see :mod:`cmdiad.metrics.segmentation`).
        where: Context for the warning when a metric is undefined.

    Returns:
        ``{defect type: {"num_test": samples of that type, "i_auroc", "p_auroc", "aupro_30",
        "aupro_1", "p_auroc_placebo", "aupro_30_placebo", "aupro_1_placebo"}}`` for each type
        other than ``"good"``, sorted by name; metrics are NaN where undefined (for instance
        without good test samples).

    Raises:
        ValueError: ``defects`` and ``image_scores`` differ in length.
    """
    kinds = np.asarray(defects).astype(str)
    scores, labels_np = to_numpy(image_scores, np.float64), to_numpy(labels, np.int64)
    maps_np, masks_np = to_numpy(maps), to_numpy(masks, bool)
    if kinds.shape != scores.shape:
        raise ValueError(f"defects {kinds.shape} and image scores {scores.shape} differ in shape")
    good = kinds == GOOD
    placebo = placebo_per_defect(maps_np, masks_np, kinds, mode, good=GOOD)
    result: dict[str, dict[str, float | int]] = {}
    for kind in sorted(set(kinds.tolist()) - {GOOD}):
        take = good | (kinds == kind)
        metrics = evaluate_or_nan(scores[take], labels_np[take], maps_np[take], masks_np[take], mode,
                                  where=f"{where} {kind}".strip())
        result[kind] = {"num_test": int(np.sum(kinds == kind)), **metrics, **placebo[kind]}
    return result


def evaluate_record(
    image_scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    defects: np.ndarray | list[str] | None,
    mode: str = "exact",
    *,
    where: str = "",
) -> dict[str, object]:
    """The metric part of one result record: ``num_test``, the overall metrics and ``per_defect``.

    The experiment and ``cmdiad evaluate`` both call this on the arrays of ``raw/<row>/<category>.npz``,
    so the numbers they report are the same. ``defects=None`` (raw files written before defect
    types were stored) gives an empty ``per_defect``.
    """
    overall = evaluate_or_nan(image_scores, labels, maps, masks, mode, where=where)
    per_defect = {} if defects is None else evaluate_per_defect(
        image_scores, labels, maps, masks, defects, mode, where=where)
    return {"num_test": int(len(image_scores)), **overall, "per_defect": per_defect}
