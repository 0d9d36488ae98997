"""Fit/save/load/predict, true few-modal inference, partially paired training, mixed inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.cli import main
from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, MemoryConfig
from cmdiad.errors import ModelFileError
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder, load_detector, save_detector


def _cfg(method: str, main: str, **data) -> DetectorConfig:
    return DetectorConfig(
        method=method, main=main, data=DataConfig(image_size=(64, 64), **data),
        memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
        distill=DistillConfig(epochs=2, width=8, trunk_width=4, trunk_blocks=1),
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("method", "main"), [("f2f", "xyz"), ("i2f", "rgb"), ("dual", "both")])
def test_saved_detector_scores_like_the_fitted_one(tiny_dataset: Path, tmp_path: Path, method, main) -> None:
    cfg = _cfg(method, main)
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    det.fit(list_records(tiny_dataset, "ring", "train"), validation=list_records(tiny_dataset, "ring", "validation"))
    test = list_records(tiny_dataset, "ring", "test")
    before = det.score(test)
    save_detector(det, tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    after = loaded.score(test)
    torch.testing.assert_close(after.image_score, before.image_score)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map)
    assert loaded.threshold == det.threshold


def test_few_modal_inference_never_touches_the_missing_modality(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path / "data")
    for f in (root / "ring" / "test").glob("*/rgb/*.png"):
        f.unlink()  # the test samples have no RGB at all
    cfg = _cfg("f2f", "xyz")
    encoder = build_encoder(cfg, device="cpu")
    det = Detector(cfg, encoder)
    det.fit(list_records(root, "ring", "train"))
    calls = []
    rgb = encoder.extractors["rgb"]
    original = rgb.patch_features
    rgb.patch_features = lambda x: calls.append(x.shape) or original(x)  # type: ignore[method-assign]
    test = list_records(root, "ring", "test")
    assert all(r.modalities == {"xyz"} for r in test)
    scores = det.score(test)
    assert scores.image_score.shape == (len(test),) and torch.isfinite(scores.image_score).all()
    assert calls == []


def test_partially_paired_training(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path / "data")
    train_rgb = sorted((root / "ring" / "train" / "good" / "rgb").glob("*.png"))
    for f in train_rgb[: len(train_rgb) // 2]:
        f.unlink()
    cfg = _cfg("f2f", "xyz")
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    train = list_records(root, "ring", "train")
    report = det.fit(train)
    assert report.num_train == len(train)  # the xyz bank uses every sample
    assert report.num_paired == len(train) - len(train_rgb) // 2
    assert det.score(list_records(root, "ring", "test")).image_score.isfinite().all()


def test_paired_fraction_option(tiny_dataset: Path) -> None:
    cfg = _cfg("f2f", "rgb", paired_fraction=0.5)
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    report = det.fit(list_records(tiny_dataset, "ring", "train"))
    assert report.num_paired == 3


def test_cli_fit_predict_mixed_folder(tiny_dataset: Path, tmp_path: Path, tiny_sets) -> None:
    model = tmp_path / "model"
    assert main(["fit", str(tiny_dataset), "--category", "ring", "--method", "mixed", "--out", str(model),
                 *tiny_sets]) == 0
    folder = tmp_path / "incoming"
    src = tiny_dataset / "ring" / "test"
    shutil.copytree(src / "good", folder / "a")
    stems = sorted(p.stem for p in (folder / "a" / "rgb").glob("*.png"))
    (folder / "a" / "rgb" / f"{stems[0]}.png").unlink()  # xyz only
    (folder / "a" / "xyz" / f"{stems[1]}.tiff").unlink()  # rgb only
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(folder), "--out", str(out)]) == 0
    rows = json.loads((out / "predictions.json").read_text())
    routes = {Path(r["rgb"] or r["xyz"]).stem: r["route"] for r in rows}
    assert routes[stems[0]] == "xyz" and routes[stems[1]] == "rgb" and routes[stems[2]] == "both"
    assert all(isinstance(r["score"], float) and r["anomalous"] in (True, False) for r in rows)
    assert all((out / h).is_file() for r in rows for h in r["heatmaps"])
    assert (out / "predictions.csv").read_text().count("\n") == len(rows) + 1


def test_corrupted_or_foreign_model_dir(tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "detector.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="detector.json"):
        load_detector(foreign)
    (foreign / "detector.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a cmdiad detector"):
        load_detector(foreign)
    assert main(["predict", str(tmp_path / "nothing"), str(tmp_path)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_fusion_fit_on_validation_and_fallback(tiny_dataset: Path, caplog) -> None:
    from cmdiad.config import FusionConfig, replace

    base = _cfg("dual", "both")
    encoder = build_encoder(base, device="cpu")
    train, val = list_records(tiny_dataset, "ring", "train"), list_records(tiny_dataset, "ring", "validation")
    weights = {}
    for fit_on in ("train", "validation"):
        det = Detector(replace(base, fusion=FusionConfig(kind="sum", fit_on=fit_on)), encoder)
        det.fit(train, validation=val)
        weights[fit_on] = det.fuser.image_weights.copy()
    assert not np.allclose(weights["train"], weights["validation"])
    det = Detector(replace(base, fusion=FusionConfig(kind="sum", fit_on="validation")), encoder)
    with caplog.at_level("WARNING"):
        det.fit(train)
    assert "no validation samples" in caplog.text
    np.testing.assert_allclose(det.fuser.image_weights, weights["train"])


def test_cli_fit_says_when_a_hallucinated_map_is_left_out(tiny_dataset: Path, tmp_path: Path, tiny_sets,
                                                           capsys) -> None:
    from cmdiad.pipeline.persist import load_detector

    model = tmp_path / "model"
    # a fidelity floor no distiller reaches: the map is left out of the pixels, and the fit says so
    assert main(["fit", str(tiny_dataset), "--category", "ring", "--method", "f2f", "--main", "rgb", "--out",
                 str(model), *tiny_sets, "--set", "fusion.fidelity_floor=0.999"]) == 0
    assert "pixel fusion: main sensor only (hallucination fidelity r2" in capsys.readouterr().out
    assert load_detector(model).fuser.config.pixel_combine == "real"
