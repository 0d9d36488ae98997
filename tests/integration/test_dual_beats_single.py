"""Issue 4: with geometry-only and appearance-only defects, fused dual banks beat each single bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmdiad.config import DataConfig, DetectorConfig, replace
from cmdiad.io.mvtec3d import list_records
from cmdiad.metrics.classification import image_auroc
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder
from cmdiad.synthetic.generator import SynthConfig, generate_dataset


@pytest.mark.slow
def test_dual_bank_with_fusion_beats_each_single_bank(tmp_path: Path) -> None:
    size = (128, 128)
    cfg = SynthConfig(categories=("ring",), image_size=size, train=10, validation=0, test_good=8,
                      test_per_defect=4, defects=("bump", "dent", "stain"), seed=1)
    generate_dataset(tmp_path, cfg)
    base = DetectorConfig(data=DataConfig(image_size=size))
    encoder = build_encoder(base, device="cpu")
    train, test = list_records(tmp_path, "ring", "train"), list_records(tmp_path, "ring", "test")
    labels = np.array([r.label for r in test])
    auroc = {}
    for method, main in (("xyz", "xyz"), ("rgb", "rgb"), ("dual", "both")):
        det = Detector(replace(base, method=method, main=main), encoder)
        det.fit(train)
        auroc[method] = image_auroc(det.score(test).image_score.numpy(), labels)
    assert auroc["dual"] > auroc["xyz"] and auroc["dual"] > auroc["rgb"], auroc
