"""Per-defect-type metrics: each type against the good samples only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmdiad.metrics.per_defect import evaluate_per_defect, evaluate_record
from cmdiad.metrics.segmentation import evaluate


def _case(rng) -> tuple[np.ndarray, ...]:
    """3 good, 2 'crack' that score high everywhere on their defect, 2 'hole' that score low."""
    defects = np.array(["good", "good", "good", "crack", "crack", "hole", "hole"])
    labels = (defects != "good").astype(int)
    scores = np.array([0.3, 0.4, 0.5, 0.9, 0.8, 0.1, 0.2])
    maps = rng.random((7, 8, 8)).astype(np.float32) * 0.1
    masks = np.zeros((7, 8, 8), bool)
    masks[3:, 2:5, 2:5] = True
    maps[3:5][masks[3:5]] = 1.0  # crack: its region is the hottest
    maps[5:7][masks[5:7]] = 0.0  # hole: its region is the coldest
    return scores, labels, maps, masks, defects


def test_each_type_is_ranked_against_good_only(rng) -> None:
    scores, labels, maps, masks, defects = _case(rng)
    per = evaluate_per_defect(scores, labels, maps, masks, defects)
    assert list(per) == ["crack", "hole"]
    assert per["crack"]["num_test"] == 2 and per["hole"]["num_test"] == 2
    assert per["crack"]["i_auroc"] == 1.0 and per["hole"]["i_auroc"] == 0.0
    assert per["crack"]["p_auroc"] == 1.0 and per["hole"]["p_auroc"] < 0.1
    assert per["crack"]["aupro_30"] == pytest.approx(1.0) and per["hole"]["aupro_30"] == pytest.approx(0.0)
    overall = evaluate(scores, labels, maps, masks)
    assert 0.0 < overall["i_auroc"] < 1.0  # the mix hides that holes are never found


def test_subset_metrics_equal_metrics_of_the_subset(rng) -> None:
    scores, labels, maps, masks, defects = _case(rng)
    maps = rng.random(maps.shape).astype(np.float32)
    take = np.isin(defects, ["good", "hole"])
    expected = evaluate(scores[take], labels[take], maps[take], masks[take])
    got = evaluate_per_defect(scores, labels, maps, masks, defects)["hole"]
    assert {k: got[k] for k in expected} == expected


def test_without_good_samples_metrics_are_nan_not_an_error(rng) -> None:
    scores, labels, maps, masks, defects = _case(rng)
    keep = defects != "good"
    per = evaluate_per_defect(scores[keep], labels[keep], maps[keep], masks[keep], defects[keep])
    assert math.isnan(per["crack"]["i_auroc"]) and per["crack"]["num_test"] == 2


def test_length_mismatch_is_an_error(rng) -> None:
    scores, labels, maps, masks, defects = _case(rng)
    with pytest.raises(ValueError, match="defects"):
        evaluate_per_defect(scores, labels, maps, masks, defects[:-1])


def test_record_has_count_overall_and_per_defect(rng) -> None:
    scores, labels, maps, masks, defects = _case(rng)
    rec = evaluate_record(scores, labels, maps, masks, defects)
    assert rec["num_test"] == 7 and set(rec["per_defect"]) == {"crack", "hole"}
    assert rec["i_auroc"] == evaluate(scores, labels, maps, masks)["i_auroc"]
    assert evaluate_record(scores, labels, maps, masks, None)["per_defect"] == {}
