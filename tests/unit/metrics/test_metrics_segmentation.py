"""P-AUROC and AU-PRO: hand-built cases, a brute-force reference and the official procedure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmdiad.metrics.segmentation import aupro, evaluate, label_regions, pixel_auroc


def _rect_masks() -> np.ndarray:
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[0, 10:14, 10:12] = True
    masks[1, 5:12, 5:7] = True
    return masks


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Loop over every distinct threshold (positive = score >= t), then clip the curve."""
    per_image = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, np.ones((3, 3)))
        per_image += [(i, lab == r) for r in range(1, n + 1)]
    neg = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = (maps[neg] >= t).mean()
        pro = np.mean([(maps[i][reg] >= t).mean() for i, reg in per_image])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def _official_restated(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """§5 of the method spec, step by step."""
    comps = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, np.ones((3, 3)))
        comps += [maps[i][lab == r] for r in range(1, n + 1)]
    ok = np.sort(maps[~masks])
    fprs, pros = [1.0], [1.0]
    for p in np.linspace(0, len(ok) - 1, 100).astype(int):
        t = ok[p]
        fprs.append(1 - (p + 1) / len(ok))
        pros.append(np.mean([np.mean(c > t) for c in comps]))
    order = np.argsort(fprs, kind="stable")
    x, y = np.array(fprs)[order], np.array(pros)[order]
    mask = x <= limit
    area = np.trapezoid(y[mask], x[mask])
    if limit not in x:
        j = np.searchsorted(x, limit)
        y_lim = y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1])
        area += 0.5 * (y_lim + y[j - 1]) * (limit - x[j - 1])
    return area / limit


@pytest.mark.parametrize("mode", ["exact", "official100"])
def test_map_equal_to_mask_gives_one(mode: str) -> None:
    masks = _rect_masks()
    assert aupro(masks.astype(np.float32), masks, 0.3, mode) == pytest.approx(1.0)
    assert aupro(masks.astype(np.float32), masks, 0.01, mode) == pytest.approx(1.0)
    assert pixel_auroc(masks.astype(np.float32), masks) == 1.0


def test_constant_map_is_the_diagonal_in_exact_mode() -> None:
    masks = _rect_masks()
    # One threshold: the curve is (0, 0) -> (1, 1), so the area to 0.3 is 0.3² / 2, normalised 0.15.
    assert aupro(np.ones(masks.shape, np.float32), masks, 0.3) == pytest.approx(0.15)
    assert aupro(np.ones(masks.shape, np.float32), masks, 0.3, "official100") < 1e-3


def test_one_region_always_detected_one_never() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 12, 12), dtype=bool)
    masks[0, 1:4, 1:4] = True
    masks[1, 6:9, 6:10] = True
    maps = rng.uniform(0, 1, masks.shape).astype(np.float32)
    maps[0, 1:4, 1:4] = 5.0  # above every negative: detected at FPR 0
    maps[1, 6:9, 6:10] = -1.0  # below every negative: found only at FPR 1
    assert aupro(maps, masks, 0.3) == pytest.approx(0.5)
    assert aupro(maps, masks, 0.01) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("limit", [0.3, 0.01, 0.05])
def test_exact_matches_brute_force(seed: int, limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks = _rect_masks()
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
    maps = np.round(maps, 1)  # plenty of ties
    assert aupro(maps, masks, limit) == pytest.approx(_brute_force_aupro(maps, masks, limit), abs=1e-9)


@pytest.mark.parametrize("limit", [0.3, 0.01])
def test_official100_matches_the_restated_procedure(limit: float) -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((4, 20, 20), dtype=bool)
    masks[0, 3:8, 3:8] = True
    masks[2, 10:18, 2:5] = True
    masks[3, 0:2, 15:20] = True
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.2 * masks
    assert aupro(maps, masks, limit, "official100") == pytest.approx(
        _official_restated(maps, masks, limit), abs=1e-9
    )


def test_regions_are_eight_connected() -> None:
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal neighbours: one region
    masks[0, 4, 4] = True
    ids, count = label_regions(masks)
    assert count == 2 and ids.dtype == np.int32 and ids.reshape(5, 5)[1, 1] == ids.reshape(5, 5)[2, 2]


def test_evaluate_record_and_errors() -> None:
    masks = _rect_masks()
    maps = masks.astype(np.float32)
    record = evaluate(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0]), maps, masks)
    assert record == pytest.approx({"i_auroc": 1.0, "p_auroc": 1.0, "aupro_30": 1.0, "aupro_1": 1.0})
    with pytest.raises(ValueError, match="regions"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="both classes"):
        pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="mode"):
        aupro(maps, masks, mode="dense")
