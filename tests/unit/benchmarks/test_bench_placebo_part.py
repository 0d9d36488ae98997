"""bench_placebo_part: the placebo restricted to the part."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_placebo_part as bpp  # noqa: E402

from cmdiad.metrics.placebo import placebo_metrics  # noqa: E402


def test_part_placebo_is_the_transplant_placebo_on_a_whole_part_and_follows_the_part() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = masks[1, 5:7, 4:7] = True
    everywhere = np.ones_like(maps, dtype=bool)
    assert np.isclose(bpp.part_placebo(maps, everywhere, masks), placebo_metrics(maps, masks)["p_auroc_placebo"])
    # the part covers only the left half, where the maps are highest: the placebo counts those pixels only
    maps[:, :, :4] += 1.0
    left = np.zeros_like(everywhere)
    left[:, :, :4] = True
    assert bpp.part_placebo(maps, left, masks) > placebo_metrics(maps, masks)["p_auroc_placebo"]
    assert bpp.part_placebo(maps, left, masks) > 0.7  # only the upper half of the pixels under the masks (mean 0.75)
