"""bench_seeds: calibration of a seed's map, skill per defect type, and the table's spread and counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_seeds as bs  # noqa: E402


def _parts() -> dict:
    """Two good parts and two bump parts of 8x8 pixels; each bump covers the top-left 2x2 block."""
    defects = np.array(["good", "good", "bump", "bump"])
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, :2, :2] = True
    return {"defects": defects, "masks": masks}


def test_calibrated_puts_the_median_at_0_and_the_good_tail_at_1() -> None:
    val = np.arange(1001, dtype=float)  # median 500, 0.999 quantile 999
    out = bs.calibrated(np.array([500.0, 999.0, 1498.0]), val)
    assert np.allclose(out, [0.0, 1.0, 2.0])


def test_skill_is_zero_for_a_map_that_only_knows_where_defects_lie() -> None:
    d = _parts()
    prior = np.zeros((4, 8, 8))
    prior[:, :4, :4] = 1.0  # higher where defects tend to lie, on every part alike
    assert bs.skills(prior, prior, d) == {"bump": 0.0}
    seeing = prior.copy()
    seeing[2:, :2, :2] += 1.0  # also rises on the defects themselves
    assert bs.skills(seeing, prior, d)["bump"] > 0.5


def test_lines_give_the_spread_over_seeds_and_count_the_seeds_above_main() -> None:
    table = {"bump": {"main": [[0.3], [0.5]], "hall": [[0.2, 0.6, 0.4], [0.2, 0.6, 0.6]],
                      "ensemble": [[0.5], [0.7]], "fused": [[0.3, 0.5, 0.4], [0.3, 0.5, 0.4]]}}  # fmt: skip
    (line,) = bs.lines("set", "f2f_rgb", table, [1, 2, 3])
    # main 0.40; seeds' means over categories 0.20, 0.60, 0.50 -> two of three above main
    assert line == "| set | f2f_rgb | bump | 0.40 | 0.20 / 0.43 / 0.60 | 2 of 3 | 0.60 | 0.30 / 0.40 / 0.50 |"
