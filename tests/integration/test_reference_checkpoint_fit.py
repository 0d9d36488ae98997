"""`cmdiad fit --set distill.checkpoint=...` uses a reference-layout distiller instead of training one."""

from __future__ import annotations

from pathlib import Path

import torch

from cmdiad.cli import main
from cmdiad.config import PointFeatureConfig, RGBFeatureConfig
from cmdiad.distill.reference import ReferenceFeatureToFeature
from cmdiad.features import build_extractor
from cmdiad.pipeline.persist import load_detector


def _reference_file(path: Path) -> dict[str, torch.Tensor]:
    rgb, xyz = build_extractor(RGBFeatureConfig()).out_channels, build_extractor(PointFeatureConfig()).out_channels
    net = ReferenceFeatureToFeature(rgb, xyz, "rgb")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.05 * torch.randn_like(p))
    state = {ref: net.state_dict()[own] for own, ref in net.reference_keys().items()}
    torch.save({"model": state, "epoch": 99}, path)
    return {own: net.state_dict()[own] for own in net.reference_keys()}


def test_fit_loads_released_distiller_weights_instead_of_training(tiny_dataset: Path, tmp_path: Path, tiny_sets,
                                                                  capsys) -> None:
    expected = _reference_file(tmp_path / "MTFI_FtoF_RGB.pth")
    args = ["fit", str(tiny_dataset), "--category", "ring", "--method", "f2f", "--main", "rgb", *tiny_sets,
            "--set", "distill.architecture=\"reference\"", "--set", f"distill.checkpoint=\"{tmp_path}\""]
    assert main([*args, "--out", str(tmp_path / "model")]) == 0
    net = load_detector(tmp_path / "model").hallucinator.net
    for key, value in expected.items():
        assert torch.equal(net.state_dict()[key], value), key
    (tmp_path / "MTFI_FtoF_RGB.pth").write_bytes(b"not a checkpoint")
    assert main([*args, "--out", str(tmp_path / "model2")]) == 2
    err = capsys.readouterr().err
    assert "MTFI_FtoF_RGB.pth" in err and "Traceback" not in err
