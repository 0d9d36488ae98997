"""The deployment threshold is the (1 - frr) quantile of held-out good scores, not a central value."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, MemoryConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder


def test_threshold_is_the_upper_quantile_of_validation_scores(tiny_dataset: Path) -> None:
    cfg = DetectorConfig(method="xyz", main="xyz", data=DataConfig(image_size=(64, 64)),
                         memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)))
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("xyz",)))
    val = list_records(tiny_dataset, "ring", "validation")
    det.fit(list_records(tiny_dataset, "ring", "train"), validation=val, threshold_frr=0.01)
    scores = det.score(val).image_score.numpy()
    assert len(set(scores.round(6))) == len(scores) >= 3  # distinct scores: a median would differ
    assert det.threshold == float(np.quantile(scores, 0.99, method="higher")) == float(scores.max())
    assert det.threshold_samples == len(val)
    assert det.map_calibration["good_p50"] < det.map_calibration["good_p999"]
