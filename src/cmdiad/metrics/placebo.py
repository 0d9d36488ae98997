"""Placebo pixel metrics: what a map scores at a defect type's masks when there is no defect.

P-AUROC and AU-PRO count every pixel of the test parts, the background included, and defects
lie on the part. A map that is merely higher on the part than around it therefore scores well
above 0.5 at any defect type, whether or not it sees the defect: its *spatial prior* does. The
placebo measures that prior. Every mask of the defect type is laid on every good test part's
map, and the metric is computed as if those good pixels were the defect:

- placebo P-AUROC: the probability that a good pixel under a transplanted mask scores above a
  good pixel drawn from all good parts (ties count half);
- placebo AU-PRO: the PRO curve of the transplanted regions (each (good part, region) pair
  weighs the same) against the false-positive rate over every good pixel, in the run's AU-PRO
  mode, integrated as the real AU-PRO is.

A map sees a defect type only as far as its metric there exceeds its placebo. Good parts
share the placement of the parts with defects (same fixture, same scanner), so the placebo
is the metric of a map that knows where the part is and nothing about the defect. All pairs
of (good part, mask) are used through per-position weights, so one sort of the good pixels
serves every defect type and the result does not depend on a random pairing.
"""

from __future__ import annotations

import math

import numpy as np

from cmdiad.metrics.segmentation import area_to_limit, label_regions, weighted_pro_curve

PLACEBO_KEYS: dict[str, str] = {
    "p_auroc": "p_auroc_placebo",
    "aupro_30": "aupro_30_placebo",
    "aupro_1": "aupro_1_placebo",
}
"""Metric -> the key of its placebo in a per-defect record."""


def _mid_rank_ecdf(values: np.ndarray) -> np.ndarray:
    """Per value, the share of ``values`` below it plus half the share equal to it."""
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, side="left")
    at_or_below = np.searchsorted(ordered, values, side="right")
    return (below + at_or_below) / (2.0 * values.size)


def placebo_metrics(
    good_maps: np.ndarray, defect_masks: np.ndarray, mode: str = "exact", *, ecdf: np.ndarray | None = None
) -> dict[str, float]:
    """Placebo P-AUROC and AU-PRO of one defect type (see the module doc).

    Args:
        good_maps: ``(G, H, W)`` maps of the good test parts.
        defect_masks: ``(J, H, W)`` ground truth of that type's parts.
        mode: AU-PRO mode (``exact`` or ``official100``).
        ecdf: :func:`_mid_rank_ecdf` of ``good_maps`` flattened, when already computed.

    Returns:
        ``{"p_auroc_placebo", "aupro_30_placebo", "aupro_1_placebo"}``; NaN without good parts or
        without defect pixels.
    """
    maps = np.asarray(good_maps, dtype=np.float32)
    masks = np.asarray(defect_masks).astype(bool)
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[1:] != masks.shape[1:]:
        raise ValueError(f"placebo needs maps (G, H, W) and masks (J, H, W) of one size, got {maps.shape} "
                         f"and {masks.shape}")
    regions, count = label_regions(masks)
    if maps.shape[0] == 0 or count == 0:
        return dict.fromkeys(PLACEBO_KEYS.values(), math.nan)
    g = maps.shape[0]
    flat = maps.reshape(g, -1)
    cover = masks.reshape(masks.shape[0], -1).sum(axis=0, dtype=np.float64)
    f = _mid_rank_ecdf(flat.reshape(-1)) if ecdf is None else ecdf
    p_auroc = float(np.sum(f.reshape(g, -1) * cover) / (g * cover.sum()))
    sizes = np.bincount(regions, minlength=count + 1).astype(np.float64)
    share = np.where(regions > 0, 1.0 / sizes[regions], 0.0).reshape(masks.shape[0], -1).sum(axis=0)
    overlap = np.tile(share / (count * g), g)
    fpr, pro = weighted_pro_curve(flat.reshape(-1), np.ones(flat.size, dtype=bool), overlap, mode)
    return {
        PLACEBO_KEYS["p_auroc"]: p_auroc,
        PLACEBO_KEYS["aupro_30"]: area_to_limit(fpr, pro, 0.3),
        PLACEBO_KEYS["aupro_1"]: area_to_limit(fpr, pro, 0.01),
    }


def placebo_per_defect(
    maps: np.ndarray, masks: np.ndarray, defects: np.ndarray, mode: str = "exact", *, good: str = "good"
) -> dict[str, dict[str, float]]:
    """:func:`placebo_metrics` of every defect type, the good parts being those labelled ``good``."""
    kinds = np.asarray(defects).astype(str)
    maps_np = np.asarray(maps, dtype=np.float32)
    masks_np = np.asarray(masks).astype(bool)
    good_maps = maps_np[kinds == good]
    ecdf = _mid_rank_ecdf(good_maps.reshape(-1)) if good_maps.size else None
    return {kind: placebo_metrics(good_maps, masks_np[kinds == kind], mode, ecdf=ecdf)
            for kind in sorted(set(kinds.tolist()) - {good})}
