"""Pixel-level metrics: P-AUROC and AU-PRO (method-spec §5).

AU-PRO has two modes:
- ``exact``: the PRO/FPR curve at *every distinct* score value (a pixel is positive when its
  score is >= the threshold), computed from one descending sort with cumulative per-region
  counts; ties are handled by evaluating only at the end of each run of equal scores.
- ``official100``: the reference (MVTec) procedure: 100 thresholds taken from the sorted
  scores of the GT-negative pixels at positions ``linspace(0, n_ok − 1, 100)``,
  ``FPR = 1 − (p+1)/n_ok``, PRO from scores strictly greater than the threshold, plus the
  point (1, 1). Its grid is coarser than 1% FPR, so AUPRO@1% differs from ``exact`` (§8 item 4).

Both integrate PRO over FPR with the trapezoid rule up to the limit, interpolating linearly at
the limit, and divide by the limit. Regions are 8-connected components of each GT mask.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from cmdiad.metrics.classification import auroc, image_auroc, to_numpy

OFFICIAL_THRESHOLDS = 100


def pixel_auroc(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> float:
    """P-AUROC over all pixels of maps (N, H, W) against masks (N, H, W)."""
    return auroc(to_numpy(maps).reshape(-1), to_numpy(masks, np.int8).reshape(-1), "pixel AUROC")


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Globally numbered 8-connected GT regions.

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        Region ids ``(N·H·W,)`` int32 (0 = GT-negative pixel, 1..R = regions) and ``R``.
    """
    labels = np.zeros(masks.shape, dtype=np.int32)
    structure = np.ones((3, 3), dtype=bool)
    count = 0
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=structure)
        labels[i] = np.where(lab > 0, lab + count, 0)
        count += n
    return labels.reshape(-1), count


def area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Normalised trapezoid area under PRO(FPR) on ``[0, limit]``, ``fpr`` ascending."""
    inside = fpr <= limit
    area = float(np.trapezoid(pro[inside], fpr[inside]))
    if not np.any(fpr == limit):
        ins = int(np.searchsorted(fpr, limit))
        if 0 < ins < fpr.size:
            x0, x1, y0, y1 = fpr[ins - 1], fpr[ins], pro[ins - 1], pro[ins]
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y_lim + y0) * (limit - x0)
    return area / limit


def region_weights(regions: np.ndarray, num_regions: int) -> np.ndarray:
    """Each pixel's share of the mean region overlap: ``1 / (|region| · R)`` inside a region, 0 outside."""
    sizes = np.bincount(regions, minlength=num_regions + 1).astype(np.float64)
    return np.where(regions > 0, 1.0 / (sizes[regions] * num_regions), 0.0)


def weighted_pro_curve(
    scores: np.ndarray, negative: np.ndarray, overlap: np.ndarray, mode: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """The FPR/PRO curve, FPR ascending, from each pixel's role.

    A pixel counts in the false-positive rate where ``negative`` is set, and adds its ``overlap``
    weight to the mean region overlap once it is detected (the weights sum to 1). The usual
    curve has ``negative = regions == 0`` and :func:`region_weights`; the placebo of
    :mod:`cmdiad.metrics.placebo` lets a good pixel be both.

    Args:
        scores: ``(P,)`` pixel scores.
        negative: ``(P,)`` bool.
        overlap: ``(P,)`` float64 weights.
        mode: ``exact``: a point at every distinct score, from (0, 0) to (1, 1) (a pixel is
            detected when its score is >= the threshold); ``official100``: see the module doc.
    """
    if mode == "official100":
        ok = np.sort(scores[negative])
        positions = np.linspace(0, ok.size - 1, OFFICIAL_THRESHOLDS).astype(int)
        order = np.argsort(scores, kind="stable")
        # Overlap of the pixels strictly above each threshold: the total minus the part at or below it.
        below = np.concatenate([[0.0], np.cumsum(overlap[order])])
        at_or_below = below[np.searchsorted(scores[order], ok[positions], side="right")]
        fpr = np.concatenate([[1.0], 1.0 - (positions + 1) / ok.size])
        pro = np.concatenate([[1.0], np.clip(below[-1] - at_or_below, 0.0, 1.0)])
        order = np.argsort(fpr, kind="stable")
        return fpr[order], pro[order]
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    negatives = np.cumsum(negative[order], dtype=np.int64)
    pro = np.cumsum(overlap[order])
    ends = np.append(np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1)
    fpr = np.concatenate([[0.0], negatives[ends] / negatives[-1]])
    return fpr, np.concatenate([[0.0], np.minimum(pro[ends], 1.0)])


def pro_curve(
    maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, mode: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO/FPR curve of maps (N, H, W) against masks (N, H, W), FPR ascending.

    Raises:
        ValueError: Without GT regions, without negative pixels, or on a bad mode.
    """
    if mode not in ("exact", "official100"):
        raise ValueError(f"unknown AU-PRO mode {mode!r}; known: exact, official100")
    scores = to_numpy(maps).reshape(-1)
    gt = to_numpy(masks, bool)
    if gt.ndim != 3 or scores.size != gt.size:
        raise ValueError(f"maps and masks must both be (N, H, W), got sizes {scores.size} and {gt.shape}")
    regions, count = label_regions(gt)
    if count == 0 or not np.any(regions == 0):
        raise ValueError(f"AU-PRO needs GT regions and negative pixels ({count} regions)")
    return weighted_pro_curve(scores, regions == 0, region_weights(regions, count), mode)


def aupro(
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    fpr_limit: float = 0.3,
    mode: str = "exact",
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    Args:
        maps: ``(N, H, W)`` anomaly maps.
        masks: ``(N, H, W)`` ground truth (non-zero = defect).
        fpr_limit: Integration limit in (0, 1].
        mode: ``"exact"`` or ``"official100"`` (see the module docstring).

    Raises:
        ValueError: Without GT regions, without negative pixels, or on a bad mode/limit.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks, mode)
    return area_to_limit(fpr, pro, fpr_limit)


def evaluate(
    image_scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    mode: str = "exact",
) -> dict[str, float]:
    """One category's record: ``i_auroc``, ``p_auroc``, ``aupro_30`` and ``aupro_1`` (unrounded)."""
    fpr, pro = pro_curve(maps, masks, mode)
    return {
        "i_auroc": image_auroc(image_scores, labels),
        "p_auroc": pixel_auroc(maps, masks),
        "aupro_30": area_to_limit(fpr, pro, 0.3),
        "aupro_1": area_to_limit(fpr, pro, 0.01),
    }
