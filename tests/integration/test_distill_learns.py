"""Issue 5: distillers trained on real synthetic features generalise to held-out good samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import DataConfig, DetectorConfig, DistillConfig
from cmdiad.features.base import to_grid
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.mtfi import PairedData, train_hallucinator
from cmdiad.pipeline.persist import build_encoder


def _patch_distance(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    return float((a - b).norm(dim=1)[valid].mean())


@pytest.mark.parametrize(("kind", "main", "target"), [("f2f", "xyz", "rgb"), ("f2f", "rgb", "xyz"),
                                                      ("i2f", "rgb", "xyz")])
def test_hallucinated_features_beat_the_mean_training_feature(tiny_dataset: Path, kind, main, target) -> None:
    cfg = DetectorConfig(data=DataConfig(image_size=(64, 64)),
                         distill=DistillConfig(epochs=40, lr=2e-3, warmup_epochs=2, batch_size=2, val_fraction=0.0,
                                               trunk_width=8, trunk_blocks=1))
    enc = build_encoder(cfg, device="cpu")
    train = list_records(tiny_dataset, "ring", "train")
    held_out = list_records(tiny_dataset, "ring", "validation")  # good samples never trained on
    data = PairedData(enc.features(train, main), enc.inputs(train, main) if kind == "i2f" else None,
                      enc.features(train, target), None)
    hall, report = train_hallucinator(kind, data, target=target, target_extractor=enc.extractor(target),
                                      image_size=(64, 64), cfg=cfg.distill, device="cpu")
    assert report.train_loss[-1] < report.train_loss[0]
    main_pf = enc.features(held_out, main)
    pred = hall(main_pf, enc.inputs(held_out, main) if kind == "i2f" else None)
    real = to_grid(enc.features(held_out, target), pred.grid)
    train_real = to_grid(data.target_features, pred.grid)
    tv = train_real.valid.unsqueeze(1).float()
    mean_feature = (train_real.features * tv).sum(dim=(0, 2, 3)) / tv.sum()
    valid = real.valid & pred.valid
    ours = _patch_distance(pred.features, real.features, valid)
    baseline = _patch_distance(mean_feature.view(1, -1, 1, 1).expand_as(real.features), real.features, valid)
    assert ours < baseline, (ours, baseline)
