"""Placebo pixel metrics: against a brute force over every (good part, mask) pair, and what they tell."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from cmdiad.metrics.per_defect import evaluate_per_defect
from cmdiad.metrics.placebo import placebo_metrics, placebo_per_defect
from cmdiad.metrics.segmentation import area_to_limit


def _brute(good: np.ndarray, masks: np.ndarray) -> tuple[float, float, float]:
    """Placebo P-AUROC and AU-PRO (exact) by listing every (good part, mask) pair."""
    pos = np.concatenate([g[m] for g in good for m in masks])
    neg = good.reshape(-1)
    p_auroc = roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        regions += [lab == i for i in range(1, n + 1)]
    thresholds = np.unique(neg)[::-1]
    fpr = [0.0] + [float(np.mean(neg >= t)) for t in thresholds]
    pro = [0.0] + [float(np.mean([np.mean(g[r] >= t) for g in good for r in regions])) for t in thresholds]
    return p_auroc, area_to_limit(np.array(fpr), np.array(pro), 0.3), area_to_limit(np.array(fpr), np.array(pro), 0.01)


@pytest.mark.parametrize("ties", [False, True])
def test_placebo_matches_every_pair_listed(ties: bool) -> None:
    rng = np.random.default_rng(3)
    good = rng.random((4, 12, 14)).astype(np.float32)
    if ties:
        good = np.round(good * 6) / 6
    masks = np.zeros((3, 12, 14), bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 8:11, 9:13] = True
    masks[1, 1:3, 1:3] = True  # a second region in the same part
    masks[2, 5:9, 5:8] = True
    got = placebo_metrics(good, masks)
    want = _brute(good, masks)
    assert got["p_auroc_placebo"] == pytest.approx(want[0], abs=1e-12)
    assert got["aupro_30_placebo"] == pytest.approx(want[1], abs=1e-12)
    assert got["aupro_1_placebo"] == pytest.approx(want[2], abs=1e-12)


def _scene(rng: np.random.Generator, n: int, *, defect: bool, sees: bool) -> tuple[np.ndarray, np.ndarray]:
    """Maps (n, 32, 32) of a part in a fixed place (a disc the map scores higher than the table)
    and masks of defects on the part; ``sees``: the map also rises at the defect."""
    yy, xx = np.mgrid[:32, :32]
    part = (yy - 16) ** 2 + (xx - 16) ** 2 < 100
    maps = rng.normal(0, 0.3, (n, 32, 32)) + 1.0 * part
    masks = np.zeros((n, 32, 32), bool)
    if defect:
        for i in range(n):
            cy, cx = rng.integers(11, 21, 2)
            masks[i, cy - 2:cy + 2, cx - 2:cx + 2] = True
        if sees:
            maps = maps + 2.0 * masks
    return maps.astype(np.float32), masks


def test_a_map_that_only_knows_where_the_part_is_scores_its_placebo() -> None:
    rng = np.random.default_rng(0)
    good, _ = _scene(rng, 10, defect=False, sees=False)
    blind, blind_masks = _scene(rng, 10, defect=True, sees=False)
    seeing, seeing_masks = _scene(rng, 10, defect=True, sees=True)
    for maps, masks, sees in ((blind, blind_masks, False), (seeing, seeing_masks, True)):
        all_maps = np.concatenate([good, maps])
        all_masks = np.concatenate([np.zeros_like(masks), masks])
        kinds = np.array(["good"] * 10 + ["spot"] * 10)
        per = evaluate_per_defect(np.r_[np.zeros(10), np.ones(10)], kinds != "good", all_maps, all_masks, kinds)
        spot = per["spot"]
        # The part alone lifts P-AUROC far above chance, for the blind map too.
        assert spot["p_auroc_placebo"] > 0.75
        if sees:
            assert spot["p_auroc"] > spot["p_auroc_placebo"] + 0.15
            assert spot["aupro_30"] > spot["aupro_30_placebo"] + 0.3
        else:
            assert spot["p_auroc"] == pytest.approx(spot["p_auroc_placebo"], abs=0.03)
            assert spot["aupro_30"] == pytest.approx(spot["aupro_30_placebo"], abs=0.1)


def test_placebo_is_nan_without_good_parts_and_per_defect_uses_the_good_ones() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    assert all(math.isnan(v) for v in placebo_metrics(np.zeros((0, 8, 8)), masks).values())
    maps = rng.random((5, 8, 8)).astype(np.float32)
    kinds = np.array(["good", "a", "good", "b", "good"])
    all_masks = np.zeros((5, 8, 8), bool)
    all_masks[1, 1:3, 1:3] = True
    all_masks[3, 5:7, 4:7] = True
    per = placebo_per_defect(maps, all_masks, kinds)
    assert sorted(per) == ["a", "b"]
    assert per["b"] == placebo_metrics(maps[[0, 2, 4]], all_masks[[3]])
    with pytest.raises(ValueError, match="placebo needs maps"):
        placebo_metrics(maps[:2], np.zeros((1, 4, 4), bool))
