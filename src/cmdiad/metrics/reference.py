"""How the reference code's result tables average metrics over categories.

The reference rounds every category's I-AUROC, P-AUROC and AUPRO to 3 decimals when it stores
them, and its "Mean" column is the mean of those rounded values, rounded again. Reproducing a
published mean therefore needs the same two roundings; exact means can differ by up to 0.0005
plus the per-category rounding errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mean_over_categories(values: Iterable[float], round_per_class_digits: int | None = None) -> float:
    """Mean of per-category metric values, optionally rounded the reference's way.

    Args:
        values: One value per category.
        round_per_class_digits: ``None``: the exact mean. ``d``: each value rounded to ``d``
            decimals (Python's ``round``), then their mean rounded to ``d`` decimals (NumPy's
            ``round``, as the reference's pandas table does); ``metrics.round_per_class_digits``.

    Returns:
        The mean; NaN when ``values`` is empty or holds a NaN.
    """
    vals = [float(v) for v in values]
    if not vals:
        return math.nan
    if round_per_class_digits is None:
        return float(np.mean(vals))
    if round_per_class_digits < 0:
        raise ValueError(f"round_per_class_digits must be >= 0, got {round_per_class_digits}")
    rounded = [round(v, round_per_class_digits) for v in vals]
    return float(np.round(np.mean(rounded), round_per_class_digits))
