"""ONNX export: the graph scores like the PyTorch detector; rows with non-torch steps are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import (
    CoresetConfig,
    DataConfig,
    DetectorConfig,
    DistillConfig,
    FusionConfig,
    MemoryConfig,
    RGBFeatureConfig,
    replace,
)
from cmdiad.errors import ModelFileError
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.export import ExportError, check_exportable, export_onnx
from cmdiad.pipeline.onnx_model import load_model, load_onnx_model, read_onnx_metadata
from cmdiad.pipeline.persist import build_encoder, load_detector, save_detector
from cmdiad.pipeline.presets import preset
from cmdiad.synthetic.generator import SynthConfig, generate_dataset
from cmdiad.types import Scores

pytest.importorskip("onnxruntime")


def _assert_parity(got: Scores, expected: Scores) -> None:
    """ONNX Runtime's scores against PyTorch's: equal to float32 rounding, which sums in another order
    (1e-4 absolute, plus one part in a million of the value: image scores far above 1 are seen)."""
    for key in ("image_score", "anomaly_map"):
        torch.testing.assert_close(getattr(got, key), getattr(expected, key), rtol=1e-6, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_data")
    generate_dataset(root, SynthConfig(categories=("ring",), image_size=(64, 64), train=5, validation=2,
                                       test_good=2, test_per_defect=1, seed=3))
    return root


def _cfg(method: str, main: str, image_score: str = "patch_max", aggregation: str = "upsample_first") -> DetectorConfig:
    return DetectorConfig(
        method=method, main=main, data=DataConfig(image_size=(64, 64)),
        rgb=RGBFeatureConfig(pretrained=False, aggregation=aggregation),
        memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5), image_score=image_score),
        distill=DistillConfig(epochs=2, width=8, trunk_width=4, trunk_blocks=1),
    )


_FITTED: dict[tuple[str, ...], Detector] = {}


def _fit(root: Path, method: str, main: str, image_score: str = "patch_max",
         aggregation: str = "upsample_first") -> Detector:
    key = (method, main, image_score, aggregation)
    if key in _FITTED:
        return _FITTED[key]
    torch.manual_seed(0)
    cfg = _cfg(method, main, image_score, aggregation)
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("rgb", "xyz")))
    det.fit(list_records(root, "ring", "train"), validation=list_records(root, "ring", "validation"))
    _FITTED[key] = det
    return det


@pytest.mark.parametrize(("method", "main", "image_score", "aggregation"),
                         [("rgb", "rgb", "patch_max", "upsample_first"), ("f2f", "rgb", "patch_max", "upsample_first"),
                          ("i2f", "rgb", "patch_max", "upsample_first"), ("rgb", "rgb", "map_max", "upsample_first"),
                          ("rgb", "rgb", "map_max", "split"), ("f2f", "rgb", "patch_max", "split")])
def test_onnx_scores_match_the_detector(tiny_data: Path, tmp_path: Path, method: str, main: str,
                                        image_score: str, aggregation: str) -> None:
    fitted = _fit(tiny_data, method, main, image_score, aggregation)
    save_detector(fitted, tmp_path / "model")
    det = load_detector(tmp_path / "model")  # what `cmdiad export` reads
    onnx_path = export_onnx(det, tmp_path / "model.onnx")
    test = list_records(tiny_data, "ring", "test")
    expected = det.score(test)
    # the loaded core holds what was fitted: every bank (both views of a split one), distiller and fuser
    saved, loaded = fitted.core.state_dict(), det.core.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key])
    got = load_onnx_model(onnx_path).score(test)
    assert got.anomaly_map.shape == expected.anomaly_map.shape == (len(test), 64, 64)
    _assert_parity(got, expected)
    assert float(expected.image_score.std()) > 0  # the comparison is not between constants


def test_onnx_leaves_out_a_hallucinated_map_the_fit_left_out(tiny_data: Path, tmp_path: Path) -> None:
    # a fidelity floor no distiller reaches: the gated fuser's pixels take the camera's map alone
    cfg = replace(_cfg("f2f", "rgb"), fusion=FusionConfig(kind="gated", fit_on="validation", fidelity_floor=0.999))
    torch.manual_seed(0)
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("rgb", "xyz")))
    report = det.fit(list_records(tiny_data, "ring", "train"), validation=list_records(tiny_data, "ring", "validation"))
    assert det.fuser.config.pixel_combine == "real" and report.pixel_setting == "main sensor only"
    save_detector(det, tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert loaded.fuser.config.pixel_combine == "real"
    test = list_records(tiny_data, "ring", "test")
    expected = loaded.score(test)
    got = load_onnx_model(export_onnx(loaded, tmp_path / "model.onnx")).score(test)
    _assert_parity(got, expected)
    # the map is the camera stream's calibrated map: the hallucinated stream's own map does not move it
    rgb = expected.per_modality["rgb"][1]
    w = det.fuser.pixel_weights
    torch.testing.assert_close(expected.anomaly_map, (rgb - float(w[0, 0])) / float(w[1, 0]), rtol=1e-4, atol=1e-4)


def test_onnx_scores_match_with_the_default_presets_fusion(tiny_data: Path, tmp_path: Path) -> None:
    # the shipped fuser: cross-fitted image calibration, and pixels the camera's map plus the
    # hallucinated map's part above its good median (pixel_combine "gated", gate 0, no offset), times
    # a weight. The preset weighs it by its fidelity r2, which this tiny set's distiller has below 0
    # (the map left out, the case above): the weight is set here so that the map stays in.
    fusion = FusionConfig(**preset("default")["detector"]["fusion"])
    assert fusion.pixel_weight_by_fidelity
    fusion = replace(fusion, fidelity_floor=-1e9, pixel_weight_by_fidelity=False, pixel_weight=0.5)
    cfg = replace(_cfg("f2f", "rgb"), fusion=fusion)
    torch.manual_seed(0)
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("rgb", "xyz")))
    report = det.fit(list_records(tiny_data, "ring", "train"), validation=list_records(tiny_data, "ring", "validation"))
    assert report.pixel_setting == "added above gate 0, offset 0, weight 0.5"
    save_detector(det, tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    test = list_records(tiny_data, "ring", "test")
    expected = loaded.score(test)
    got = load_onnx_model(export_onnx(loaded, tmp_path / "model.onnx")).score(test)
    _assert_parity(got, expected)
    # the map is the camera's calibrated map plus the hallucinated one's excess over its median, times
    # the weight (folded into the hallucinated column's spread)
    (rgb, hal), w = (expected.per_modality[name][1] for name in ("rgb", "xyz_from_rgb")), det.fuser.pixel_weights
    z_rgb, z_hal = ((m - float(w[0, j])) / float(w[1, j]) for j, m in enumerate((rgb, hal)))
    torch.testing.assert_close(expected.anomaly_map, z_rgb + z_hal.clamp(min=0), rtol=1e-4, atol=1e-4)
    assert float(z_hal.clamp(min=0).amax()) > 0  # the hallucinated map does move it


def test_export_with_cold_map_caches_gives_the_same_compact_graph(tiny_data: Path, tmp_path: Path) -> None:
    """`cmdiad export` runs in a fresh process, where the cached upsampling and blur matrices are
    built while the module is traced; building them must not record ops (it once gave 550,000
    nodes for a 192-px map and an export of many minutes)."""
    import onnx

    from cmdiad.scoring import patch

    det = _fit(tiny_data, "rgb", "rgb")
    export_onnx(det, tmp_path / "warm.onnx")  # the matrices are cached by now
    patch._blur_matrix.cache_clear()
    patch._upsample_matrix.cache_clear()
    export_onnx(det, tmp_path / "cold.onnx")
    warm, cold = (onnx.load(str(tmp_path / f"{n}.onnx"), load_external_data=False) for n in ("warm", "cold"))
    assert patch._blur_matrix.cache_info().currsize > 0  # the cold export did build them
    assert len(cold.graph.node) == len(warm.graph.node)
    assert not {n.op_type for n in cold.graph.node} & {"ScatterND", "Loop"}


def test_metadata_and_router_wrapping(tiny_data: Path, tmp_path: Path) -> None:
    det = _fit(tiny_data, "f2f", "rgb")
    path = export_onnx(det, tmp_path / "m.onnx")
    meta = read_onnx_metadata(path)
    assert meta["row"] == "f2f_rgb" and meta["image_size"] == [64, 64]
    assert meta["threshold"] == pytest.approx(det.threshold)
    assert meta["mean"] == list(det.encoder.extractor("rgb").mean) and meta["streams"] == ["rgb", "xyz_from_rgb"]
    router = load_model(path)
    assert set(router.detectors) == {"rgb"} and router.detectors["rgb"].modalities == ("rgb",)
    test = list_records(tiny_data, "ring", "test")
    routed = router.score(test)
    assert [r[0] for r in routed] == ["rgb"] * len(test)
    np.testing.assert_allclose([float(r[1].image_score[0]) for r in routed], det.score(test).image_score.numpy(),
                               atol=1e-4)


@pytest.mark.parametrize(("method", "main", "reason"), [
    ("f2i", "rgb", "Open3D"), ("f2f", "xyz", "point clouds"), ("xyz", "xyz", "point clouds"),
    ("dual", "both", "point clouds"), ("i2f", "xyz", "point clouds"),
])
def test_rows_reading_point_clouds_are_refused(method: str, main: str, reason: str) -> None:
    cfg = _cfg(method, main)
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("rgb",)))
    with pytest.raises(ExportError, match=reason):
        check_exportable(det)


def test_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelFileError, match="x.onnx"):
        load_onnx_model(bad)


def test_cli_export_checks_parity_and_refuses_point_cloud_rows(tiny_data: Path, tmp_path: Path, capsys) -> None:
    from cmdiad.cli import main

    save_detector(_fit(tiny_data, "rgb", "rgb"), tmp_path / "rgb_model")
    out = tmp_path / "rgb.onnx"
    assert main(["export", str(tmp_path / "rgb_model"), "--format", "onnx", str(out),
                 "--check", str(tiny_data / "ring" / "test")]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "max |diff| image score" in printed
    assert set(load_model(tmp_path / "rgb_model").detectors) == {"rgb"}  # a folder loads as a Router
    save_detector(_fit(tiny_data, "xyz", "xyz"), tmp_path / "xyz_model")
    assert main(["export", str(tmp_path / "xyz_model"), "--format", "onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported to ONNX" in err and "Traceback" not in err and not (tmp_path / "x.onnx").exists()


def test_predict_accepts_the_exported_file_in_place_of_the_model_folder(tiny_data: Path, tmp_path: Path) -> None:
    import json
    from dataclasses import replace

    from cmdiad.cli import main

    # the shipped weights, so that every load of the model folder builds the same extractor
    cfg = replace(_cfg("f2f", "rgb"), rgb=RGBFeatureConfig(pretrained=True))
    det = Detector(cfg, build_encoder(cfg, device="cpu", modalities=("rgb", "xyz")))
    det.fit(list_records(tiny_data, "ring", "train"), validation=list_records(tiny_data, "ring", "validation"))
    save_detector(det, tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--format", "onnx", str(tmp_path / "m.onnx")]) == 0
    test = str(tiny_data / "ring" / "test")
    assert main(["predict", str(tmp_path / "model"), test, "--out", str(tmp_path / "p_folder")]) == 0
    assert main(["predict", str(tmp_path / "m.onnx"), test, "--out", str(tmp_path / "p_onnx")]) == 0
    folder, onnx = (json.loads((tmp_path / p / "predictions.json").read_text()) for p in ("p_folder", "p_onnx"))
    assert [r["sample"] for r in folder] == [r["sample"] for r in onnx] and len(onnx) > 0
    assert max(abs(a["score"] - b["score"]) for a, b in zip(folder, onnx, strict=True)) <= 1e-4
    assert [a["anomalous"] for a in folder] == [b["anomalous"] for b in onnx]
    assert all(b["heatmaps"] for b in onnx)
