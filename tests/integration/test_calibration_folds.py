"""``fusion.calibration_folds``: training parts scored by banks that never saw them join the calibration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, FusionConfig, MemoryConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder
from cmdiad.scoring.fusion import calibration_constants, student_t_gate


def _config(folds: int, method: str = "dual", main: str = "both") -> DetectorConfig:
    return DetectorConfig(method=method, main=main, data=DataConfig(image_size=(64, 64)),
                          memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
                          distill=DistillConfig(epochs=1, width=8, val_fraction=0.0),
                          fusion=FusionConfig(kind="gated", fit_on="validation", calibration_folds=folds))


@pytest.mark.slow
def test_each_training_part_is_scored_by_banks_built_without_it(tiny_dataset: Path) -> None:
    train, val = list_records(tiny_dataset, "ring", "train"), list_records(tiny_dataset, "ring", "validation")
    cfg = _config(3)
    encoder = build_encoder(cfg, device="cpu")
    shared: dict = {}
    det = Detector(cfg, encoder, shared_banks=shared)
    det.fit(train, validation=val)

    # what the folds should give: part i against a detector fitted on the parts of the other folds
    plain = replace(cfg, fusion=replace(cfg.fusion, calibration_folds=0))
    expected = {s.name: torch.empty(len(train)) for s in det.streams}
    for f in range(3):
        held = [r for i, r in enumerate(train) if i % 3 == f]
        other = Detector(plain, encoder)
        other.fit([r for i, r in enumerate(train) if i % 3 != f], validation=val)
        for name, (image, _) in other.stream_scores(held).items():
            expected[name][[i for i in range(len(train)) if i % 3 == f]] = image
    image, maps = det.core.columns(det.stream_scores(val))
    rows = torch.cat([image, torch.stack([expected[s.name] for s in det.streams], dim=1)]).double().numpy()
    constants = calibration_constants(rows, "zscore_tail", 0.999, maps.reshape(-1, 2).double().numpy())
    np.testing.assert_allclose(det.fuser.image_weights[:2], constants, rtol=1e-5)
    val_only = calibration_constants(image.double().numpy(), "zscore_tail", 0.999, maps.reshape(-1, 2).double().numpy())
    assert not np.allclose(constants, val_only, rtol=1e-3)  # the folds do change the calibration

    # an MTFI row of the same category reuses the real sensor's folds; its hallucinated column has none
    folds_built = sum(1 for k in shared if k[0] == "folds")
    mtfi = Detector(_config(3, "f2f", "xyz"), encoder, shared_banks=shared)
    mtfi.fit(train, validation=val)
    assert sum(1 for k in shared if k[0] == "folds") == folds_built == 2
    np.testing.assert_allclose(mtfi.fuser.image_weights[:2, 0], det.fuser.image_weights[:2, 0], rtol=1e-6)
    assert mtfi.fuser.image_weights[2, 1] == pytest.approx(student_t_gate(3.0, len(val)))


def test_more_folds_than_training_parts_or_one_stream_calibrate_on_validation_alone(tiny_dataset: Path) -> None:
    train, val = list_records(tiny_dataset, "ring", "train"), list_records(tiny_dataset, "ring", "validation")
    encoder = build_encoder(_config(0), device="cpu")
    weights = []
    for folds in (0, len(train) + 1):
        det = Detector(_config(folds), encoder)
        det.fit(train, validation=val)
        weights.append(det.fuser.image_weights)
    np.testing.assert_array_equal(*weights)
    shared: dict = {}  # one stream: calibrating it cannot change its ranking, so no fold is built
    Detector(_config(3, "xyz", "xyz"), encoder, shared_banks=shared).fit(train, validation=val)
    assert shared and not any(k[0] == "folds" for k in shared)
