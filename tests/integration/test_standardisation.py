"""m3dm standardisation: mixed constants for two-stream methods, each bank's own for single banks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, MemoryConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder


@pytest.mark.parametrize("method", ["rgb", "xyz"])
def test_single_bank_rows_use_their_own_constants_and_dual_the_mixed_ones(tiny_dataset: Path, method: str) -> None:
    mem = MemoryConfig(coreset=CoresetConfig(ratio=0.5), standardize="m3dm")
    train = list_records(tiny_dataset, "ring", "train")
    base = DetectorConfig(data=DataConfig(image_size=(64, 64)), memory=mem)
    encoder = build_encoder(base, device="cpu")
    single = Detector(DetectorConfig(method=method, main=method, data=base.data, memory=mem), encoder)
    single.fit(train)
    dual = Detector(DetectorConfig(method="dual", main="both", data=base.data, memory=mem), encoder)
    dual.fit(train)
    feats = encoder.features(train, method)
    own_std, own_mean = torch.std_mean(feats.features.permute(0, 2, 3, 1)[feats.valid])
    assert single.banks[method].stats == pytest.approx((float(own_mean), float(own_std)), rel=1e-5)
    xyz, rgb = encoder.features(train, "xyz"), encoder.features(train, "rgb")
    mixed = (float(xyz.features.permute(0, 2, 3, 1)[xyz.valid].mean()),
             float(rgb.features.permute(0, 2, 3, 1)[rgb.valid].std()))
    assert dual.banks["xyz"].stats == pytest.approx(mixed, rel=1e-5)
    assert dual.banks["rgb"].stats == pytest.approx(mixed, rel=1e-5)
    assert single.banks[method].stats != pytest.approx(mixed, rel=1e-3)
