"""The reference's per-category rounding before the mean over categories."""

from __future__ import annotations

import math

import pytest

from cmdiad.metrics.reference import mean_over_categories


def test_exact_mean_without_rounding() -> None:
    assert mean_over_categories([0.9, 0.8, 0.7]) == pytest.approx(0.8)
    assert math.isnan(mean_over_categories([]))


def test_rounding_each_category_first_changes_the_mean() -> None:
    values = [0.12349, 0.12349, 0.12358]  # exact mean 0.12352, which rounds to 0.124
    assert mean_over_categories(values) == pytest.approx(0.12352)
    # Rounded per class first: 0.123, 0.123, 0.124 -> mean 0.12333 -> 0.123.
    assert mean_over_categories(values, 3) == pytest.approx(0.123, abs=1e-12)
    assert mean_over_categories([0.12345, 0.5], 2) == pytest.approx(0.31, abs=1e-12)  # (0.12 + 0.5) / 2


def test_result_has_at_most_the_requested_decimals() -> None:
    out = mean_over_categories([0.91234, 0.87651, 0.93333], 3)
    assert out == round(out, 3)
    with pytest.raises(ValueError, match=">= 0"):
        mean_over_categories([0.5], -1)
