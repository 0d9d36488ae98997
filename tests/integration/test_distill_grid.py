"""distill.grid = "finer": F2F/F2I/I2F work on the finer of the two patch grids, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, MemoryConfig, PointFeatureConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder, load_detector, save_detector


@pytest.mark.parametrize(("method", "main"), [("f2f", "rgb"), ("f2f", "xyz"), ("i2f", "xyz")])
def test_finer_grid_hallucinated_bank_and_round_trip(tiny_dataset: Path, tmp_path: Path, method, main) -> None:
    # xyz patches of 4 px (16x16 grid) against the RGB extractor's 8 px (8x8 grid)
    cfg = DetectorConfig(method=method, main=main, data=DataConfig(image_size=(64, 64)),
                         xyz=PointFeatureConfig(patch_stride=4), memory=MemoryConfig(coreset=CoresetConfig(ratio=1.0)),
                         distill=DistillConfig(epochs=1, width=8, trunk_width=4, trunk_blocks=1, grid="finer"))
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    train = list_records(tiny_dataset, "ring", "train")
    report = det.fit(train, validation=list_records(tiny_dataset, "ring", "validation"))
    assert det.hallucinator.grid == (16, 16)
    hall = next(s.name for s in det.streams if s.hallucinated)
    target = next(s.target for s in det.streams if s.hallucinated)
    real = det.encoder.features(train, target)
    # the hallucinated bank holds one row per valid patch of the 16x16 grid, more than an 8x8 grid has
    assert len(train) * 8 * 8 < report.bank_sizes[hall] <= len(train) * 16 * 16
    assert real.grid == ((16, 16) if target == "xyz" else (8, 8))
    test = list_records(tiny_dataset, "ring", "test")
    before = det.score(test)
    save_detector(det, tmp_path / "model")
    after = load_detector(tmp_path / "model").score(test)
    assert before.anomaly_map.shape == (len(test), 64, 64)
    torch.testing.assert_close(after.image_score, before.image_score)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map)
