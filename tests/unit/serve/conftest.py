"""A tiny fitted model set (rgb + dual routes) and sample files for the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, MemoryConfig, RGBFeatureConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder
from cmdiad.pipeline.routing import Router
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve_data")
    generate_dataset(root, SynthConfig(categories=("ring",), image_size=(64, 64), train=4, validation=2,
                                       test_good=1, test_per_defect=1, seed=5))
    return root


@pytest.fixture(scope="session")
def serve_router(serve_data: Path) -> Router:
    torch.manual_seed(0)
    cfg = DetectorConfig(method="rgb", main="rgb", data=DataConfig(image_size=(64, 64)),
                         rgb=RGBFeatureConfig(pretrained=False), memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)))
    encoder = build_encoder(cfg, device="cpu")
    train = list_records(serve_data, "ring", "train")
    val = list_records(serve_data, "ring", "validation")
    dets = {}
    for route, (method, main) in {"rgb": ("rgb", "rgb"), "both": ("dual", "both")}.items():
        det = Detector(DetectorConfig(**{**cfg.__dict__, "method": method, "main": main}), encoder)
        det.fit(train, validation=val)
        dets[route] = det
    return Router(dets)


@pytest.fixture(scope="session")
def part_files(serve_data: Path) -> dict[str, Path]:
    """One test sample's rgb and xyz files."""
    rec = list_records(serve_data, "ring", "test")[-1]
    return {"rgb": rec.rgb_path, "xyz": rec.xyz_path}
