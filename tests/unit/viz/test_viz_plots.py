"""Inline SVG plots of report.html."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from cmdiad.viz.plots import colour_bar, histogram_svg, roc_points, roc_svg


def test_roc_points_match_sklearn(rng) -> None:
    scores = rng.random(40).round(1)  # ties on purpose
    labels = (rng.random(40) < 0.4).astype(int)
    fpr, tpr = roc_points(scores, labels)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_roc_points_empty_with_one_class() -> None:
    assert roc_points(np.array([0.1, 0.2]), np.array([1, 1]))[0].size == 0


def test_svgs_are_inline_and_labelled(rng) -> None:
    svg = roc_svg({"bagel": (rng.random(10), np.arange(10) % 2), "<x>": (rng.random(4), np.ones(4))})
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<polyline") == 2  # diagonal + bagel
    assert "&lt;x&gt;" in svg and "http" not in svg
    hist = histogram_svg({"good": np.array([0.1, 0.2]), "defective": np.array([0.9, np.nan])})
    assert hist.count("<polyline") == 2 and "good (2)" in hist


def test_colour_bar_runs_from_low_to_high_colour() -> None:
    table = np.stack([np.arange(256), np.zeros(256), 255 - np.arange(256)], axis=1).astype(np.uint8)
    bar = colour_bar(table, width=16, height=3)
    assert bar.shape == (3, 16, 3) and tuple(bar[0, 0]) == (0, 0, 255) and tuple(bar[0, -1]) == (255, 0, 0)
