"""I-AUROC on hand-built rankings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdiad.metrics.classification import image_auroc


def test_perfect_inverted_and_tied_rankings() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert image_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert image_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert image_auroc(torch.ones(4), labels) == 0.5


def test_partial_ranking_counts_pairs() -> None:
    # Positive-over-negative pairs: 0.5 > 0.1, 0.9 > 0.1, 0.9 > 0.6; 0.5 < 0.6 -> 3 of 4.
    assert image_auroc(np.array([0.1, 0.6, 0.5, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_one_class_raises() -> None:
    with pytest.raises(ValueError, match="both classes"):
        image_auroc(torch.rand(3), torch.zeros(3))
