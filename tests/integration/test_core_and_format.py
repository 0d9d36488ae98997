"""The detector core as a module, the one-file model format, and a fourth design added by one module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, MemoryConfig, RGBFeatureConfig
from cmdiad.errors import ModelFileError
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.core import DetectorCore
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder, load_detector, save_detector


def _cfg(method: str, main: str, aggregation: str = "upsample_first") -> DetectorConfig:
    return DetectorConfig(
        method=method, main=main, data=DataConfig(image_size=(64, 64)), rgb=RGBFeatureConfig(aggregation=aggregation),
        memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
        distill=DistillConfig(epochs=2, width=8, trunk_width=4, trunk_blocks=1),
    )


def _fit(tiny_dataset: Path, method: str, main: str, aggregation: str = "upsample_first") -> Detector:
    cfg = _cfg(method, main, aggregation)
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    det.fit(list_records(tiny_dataset, "ring", "train"), validation=list_records(tiny_dataset, "ring", "validation"))
    return det


@pytest.fixture(scope="module")
def f2f_rgb(tiny_dataset: Path) -> Detector:
    return _fit(tiny_dataset, "f2f", "rgb")


def test_the_core_is_one_module_with_one_state_dict(f2f_rgb: Detector) -> None:
    core = f2f_rgb.core
    assert isinstance(core, torch.nn.Module)
    keys = set(core.state_dict())
    assert {"banks.rgb.bank", "banks.rgb.standardisation", "banks.xyz_from_rgb.bank"} <= keys
    assert any(k.startswith("hallucinator.net.") for k in keys) and any(k.startswith("fusion.") for k in keys)
    assert not any("extractor" in k for k in keys)  # frozen extractors are used, not owned


def test_the_core_scores_tensors_without_disk(f2f_rgb: Detector, tiny_dataset: Path) -> None:
    test = list_records(tiny_dataset, "ring", "test")
    feats = {"rgb": f2f_rgb.encoder.features(test, "rgb")}
    expected = f2f_rgb.score(test)
    core = f2f_rgb.core
    fresh = DetectorCore(core.config, core.image_size)
    for name, bank in core.banks.items():
        fresh.banks[name] = type(bank).empty(bank.config, *bank.bank.shape)
    fresh.hallucinator = type(core.hallucinator).from_meta(core.hallucinator.meta(), None, Path("x"))
    fresh.fusion = type(core.fusion).from_saved(core.fusion.meta(), core.state_dict(), "fusion.", Path("x"))
    fresh.load_state_dict(core.state_dict(), strict=True)
    got = fresh(feats)  # tensors in, Scores out
    torch.testing.assert_close(got.image_score, expected.image_score)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)
    assert set(got.per_modality) == {"rgb", "xyz_from_rgb"}


def test_a_model_folder_is_one_safetensors_file_and_one_json(f2f_rgb: Detector, tmp_path: Path) -> None:
    save_detector(f2f_rgb, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["detector.json", "model.safetensors"]
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(f2f_rgb.core.state_dict())
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["format_version"] == 2 and meta["threshold"] == f2f_rgb.threshold


def test_weights_that_do_not_match_the_json_are_one_clear_error(f2f_rgb: Detector, tmp_path: Path) -> None:
    model = save_detector(f2f_rgb, tmp_path / "m")
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    state.pop("banks.rgb.standardisation")
    save_file(state, str(weights))
    with pytest.raises(ModelFileError, match=r"model\.safetensors.*banks\.rgb\.standardisation"):
        load_detector(model)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_detector(model)
    weights.unlink()
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_detector(model)


@pytest.mark.parametrize(("method", "main"), [("dual", "both"), ("f2f", "xyz"), ("f2i", "xyz"), ("f2f", "rgb")])
def test_split_rgb_features_bank_both_views_for_the_camera_and_the_image_view_for_distillers(
    tiny_dataset: Path, tmp_path: Path, method: str, main: str
) -> None:
    det = _fit(tiny_dataset, method, main, aggregation="split")
    c = det.encoder.extractor("rgb").score_split
    model = save_detector(det, tmp_path / "m")
    meta = json.loads((model / "detector.json").read_text())
    for s in det.streams:
        bank = det.banks[s.name]
        if s.target == "rgb" and not s.hallucinated:  # the camera's bank: one bank per view
            assert meta["banks"][s.name] == {"image": [bank.image.num_rows, c], "map": [bank.map.num_rows, c]}
        else:  # what a distiller hallucinates, and the 3D bank: one view
            assert meta["banks"][s.name] == [bank.num_rows, c if s.target == "rgb" else bank.dim]
    if det.hallucinator is not None:  # a distiller reads the image view of split RGB features
        assert det.hallucinator.main_view == (c if main == "rgb" else None)
        assert meta["hallucinator"]["main_view"] == det.hallucinator.main_view
    test = list_records(tiny_dataset, "ring", "test")
    expected, got = det.score(test), load_detector(model).score(test)
    torch.testing.assert_close(got.image_score, expected.image_score)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)
    if method == "dual":
        meta["banks"]["rgb"] = {"image": [3, c]}
        (model / "detector.json").write_text(json.dumps(meta))
        with pytest.raises(ModelFileError, match="bank shape of 'rgb'"):
            load_detector(model)


def _as_version_1(model: Path, out: Path) -> Path:
    """The folder cmdiad wrote before the one-file format (banks/, distiller/, fuser arrays inline)."""
    meta = json.loads((model / "detector.json").read_text())
    state = load_file(str(model / "model.safetensors"))
    out.mkdir()
    for name, (rows, dim) in meta["banks"].items():
        folder = out / "banks" / name
        folder.mkdir(parents=True)
        mean, std = state[f"banks.{name}.standardisation"].tolist()
        save_file({"bank": state[f"banks.{name}.bank"], "stats": torch.tensor([mean, std])},
                  str(folder / "bank.safetensors"))
        (folder / "bank.json").write_text(json.dumps({"format": "cmdiad.memory_bank", "version": 1, "config": {},
                                                      "mean": mean, "std": std, "num_entries": rows, "dim": dim}))
    hall = meta.pop("hallucinator")
    if hall is not None:
        (out / "distiller").mkdir()
        net = {k[len("hallucinator.net."):]: v for k, v in state.items() if k.startswith("hallucinator.net.")}
        save_file(net, str(out / "distiller" / "distiller.safetensors"))
        (out / "distiller" / "distiller.json").write_text(json.dumps({"format": "cmdiad.distiller", "version": 1,
                                                                      **hall["network"]}))
        (out / "distiller" / "hallucinator.json").write_text(json.dumps({k: hall[k] for k in ("kind", "target",
                                                                                             "grid")}))
    fusion = meta.pop("fusion")
    arrays = fusion.pop("arrays")
    meta["fusion"] = {**fusion, **{k: state[f"fusion.{k}"].tolist() for k in arrays}}
    del meta["banks"]
    meta["format_version"] = 1
    (out / "detector.json").write_text(json.dumps(meta))
    return out


def test_a_version_1_folder_loads_and_scores_the_same(f2f_rgb: Detector, tiny_dataset: Path, tmp_path: Path) -> None:
    old = _as_version_1(save_detector(f2f_rgb, tmp_path / "m"), tmp_path / "v1")
    test = list_records(tiny_dataset, "ring", "test")
    loaded = load_detector(old).score(test)
    torch.testing.assert_close(loaded.image_score, f2f_rgb.score(test).image_score)
    shutil.rmtree(old / "distiller")
    with pytest.raises(ModelFileError, match="distiller"):
        load_detector(old)


@pytest.fixture
def toy_design():
    """Import the toy design module (which registers it), and take it out of the registries afterwards."""
    import importlib
    import sys

    from cmdiad.designs import DESIGNS
    from cmdiad.distill.base import DISTILLERS

    module = importlib.import_module("toy_design")
    yield module
    DESIGNS.unregister(module.KIND)
    DISTILLERS.unregister(module.KIND)
    sys.modules.pop("toy_design", None)


def test_a_fourth_design_is_one_module_and_a_registry_entry(tiny_dataset: Path, tmp_path: Path, toy_design) -> None:
    det = _fit(tiny_dataset, toy_design.KIND, "rgb")
    assert [s.name for s in det.streams] == ["rgb", "xyz_from_rgb"]
    assert isinstance(det.hallucinator.net, toy_design.PatchLinear)
    test = list_records(tiny_dataset, "ring", "test")
    before = det.score(test)
    loaded = load_detector(save_detector(det, tmp_path / "lin"))
    after = loaded.score(test)
    torch.testing.assert_close(after.image_score, before.image_score)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map)
    hallucinated = before.per_modality["xyz_from_rgb"][0]
    assert torch.isfinite(hallucinated).all() and hallucinated.std() > 0
