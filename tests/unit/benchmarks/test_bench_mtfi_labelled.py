"""bench_mtfi_labelled: image AUROC per defect type over a subset of parts, and the choice counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_mtfi_labelled as bml  # noqa: E402


def test_image_auroc_scores_each_type_against_the_good_parts_among_the_given_ones_only() -> None:
    defects = np.array(["good", "good", "good", "bump", "bump", "stain"])
    scores = np.array([0.1, 0.2, 0.9, 0.5, 0.95, 0.05])
    every = bml._image_auroc(scores, defects, np.arange(6))
    assert every == {"bump": 5 / 6, "stain": 0.0}  # 0.5 beats two of the three good parts, 0.95 all
    some = bml._image_auroc(scores, defects, np.array([0, 1, 3]))  # without the high good part and the stain
    assert some == {"bump": 1.0}


def test_choices_count_one_pick_per_category_row_and_draw() -> None:
    rows = [{"data": "s", "k": 1, "category": "c", "row": "f2f_rgb", "draw": n, "choice": choice}
            for n, choice in enumerate(["default", "max", "max"]) for _ in range(2)]  # two defect types each
    line = bml.choices(rows)[2]
    cells = dict(zip(bml.IMAGE_CANDIDATES, line.strip("| ").split(" | ")[2:], strict=True))
    assert cells["default"] == "1" and cells["max"] == "2"
    assert sum(int(v) for v in cells.values()) == 3
