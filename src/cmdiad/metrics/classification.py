"""Image-level metrics."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def to_numpy(x: torch.Tensor | np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """A numpy copy/view of a tensor or array, cast to ``dtype``."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.astype(dtype, copy=False)


def auroc(scores: np.ndarray, labels: np.ndarray, what: str) -> float:
    """ROC AUC of flat ``scores`` against binary ``labels``; ValueError naming ``what`` if one class."""
    if scores.shape != labels.shape:
        raise ValueError(f"{what}: scores {scores.shape} and labels {labels.shape} differ in shape")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise ValueError(f"{what}: AUROC needs both classes, got {positives} positive of {labels.size}")
    return float(roc_auc_score(labels, scores))


def image_auroc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """I-AUROC: ROC AUC of image scores (N,) against labels (N,) (1 = defective).

    Raises:
        ValueError: When only one class is present.
    """
    return auroc(to_numpy(scores).reshape(-1), to_numpy(labels, np.int8).reshape(-1), "image AUROC")
