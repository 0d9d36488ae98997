"""``fusion.labelled_choice``: labelled defective validation parts choose an MTFI row's pixel fusion
and are never trained or calibrated on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, FusionConfig, MemoryConfig
from cmdiad.metrics.classification import auroc
from cmdiad.pipeline.core import FusionState
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.mtfi import best_choice, choose_pixel_fusion, pixel_fusion_candidates
from cmdiad.pipeline.persist import build_encoder, load_detector, save_detector
from cmdiad.pipeline.runs import category_splits
from cmdiad.synthetic.generator import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def labelled_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    generate_dataset(root, SynthConfig(categories=("ring",), image_size=(64, 64), train=6, validation=3,
                                       test_good=2, test_per_defect=1, validation_per_defect=1, seed=1))
    return root


def _config(method: str, main: str, choice: bool = True) -> DetectorConfig:
    return DetectorConfig(method=method, main=main, data=DataConfig(image_size=(64, 64)),
                          memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
                          distill=DistillConfig(epochs=1, width=8, val_fraction=0.0),
                          fusion=FusionConfig(kind="gated", fit_on="validation", labelled_choice=choice))


def test_labelled_parts_choose_the_pixel_fusion_and_never_train_or_calibrate(labelled_dataset: Path,
                                                                             tmp_path: Path) -> None:
    train, val, _ = category_splits(labelled_dataset, "ring", with_validation=True)
    labelled = [r for r in val if r.label == 1]
    good = [r for r in val if r.label == 0]
    assert len(labelled) == 5 and all(r.gt_path is not None for r in labelled)
    assert len(train) == 6 + 3 and all(r.label == 0 for r in train)  # only the good validation parts join

    cfg = _config("f2f", "rgb")
    encoder = build_encoder(cfg, device="cpu")
    torch.manual_seed(0)
    det = Detector(cfg, encoder)
    report = det.fit(train, validation=val)
    torch.manual_seed(0)
    blind = Detector(_config("f2f", "rgb", choice=False), encoder, hallucinator=det.hallucinator)
    blind.fit(train, validation=good)

    # the threshold and the calibration come from the good parts alone
    assert det.threshold == pytest.approx(blind.threshold, rel=1e-6)  # image fusion: no pixel choice in it
    np.testing.assert_allclose(det.fuser.image_weights, blind.fuser.image_weights, rtol=1e-6)
    assert det.threshold_samples == len(good)

    # the choice: each candidate's mean P-AUROC over the labelled parts' defect types, recomputed here
    choice = report.pixel_fusion
    label_free = replace(blind.fuser.config, labelled_choice=True)  # the same fit, but for the switch
    candidates = pixel_fusion_candidates(label_free)
    assert candidates[choice["label_free"]] == label_free and choice["labelled_parts"] == 5
    assert list(candidates) == ["main sensor only", "maximum, offset 0", "maximum, offset 0.5", "maximum, offset 1"]
    per_good, per_bad = det.stream_scores(good), det.stream_scores(labelled)
    masks = encoder.masks(labelled).numpy()
    expected = {}
    for name, fcfg in candidates.items():
        state = FusionState(fcfg)
        image, maps = det.core.columns(per_good)
        state.fit(image, maps.reshape(-1, maps.shape[-1]), [s.hallucinated for s in det.streams])
        g = state.pixel_scores(maps.reshape(-1, maps.shape[-1])).numpy()
        b = state.pixel_scores(det.core.columns(per_bad)[1].reshape(-1, maps.shape[-1])).numpy().reshape(masks.shape)
        expected[name] = {r.defect: auroc(np.concatenate([g, b[i].ravel()]),
                                          np.concatenate([np.zeros(g.size, bool), masks[i].ravel()]), "pixel")
                          for i, r in enumerate(labelled)}  # one part per defect type here
    assert set(choice["p_auroc"]) == set(expected)
    for name in expected:
        assert choice["p_auroc"][name] == pytest.approx(expected[name], abs=1e-6)
    assert choice["chosen"] == choose_pixel_fusion(expected, choice["label_free"])
    assert det.fuser.config == candidates[choice["chosen"]] and report.pixel_setting == choice["chosen"]

    # the chosen fusion is what the saved model scores with
    save_detector(det, tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert loaded.fuser.config == det.fuser.config
    torch.testing.assert_close(loaded.score(labelled).anomaly_map, det.score(labelled).anomaly_map)


def test_bank_only_rows_and_the_switch_off_ignore_labelled_parts(labelled_dataset: Path) -> None:
    train, val, _ = category_splits(labelled_dataset, "ring", with_validation=False)
    encoder = build_encoder(_config("rgb", "rgb"), device="cpu")
    assert Detector(_config("rgb", "rgb"), encoder).fit(train, validation=val).pixel_fusion == {}
    off = Detector(_config("f2f", "xyz", choice=False), encoder)
    assert off.fit(train, validation=val).pixel_fusion == {}
    assert off.fuser.config.pixel_combine == "max"


def test_real_pixel_combine_leaves_the_hallucinated_map_out() -> None:
    state = FusionState(replace(FusionConfig(kind="gated", fit_on="validation"), pixel_combine="real"))
    rng = np.random.default_rng(0)
    rows = torch.as_tensor(rng.standard_normal((500, 2)))
    state.fit(rows[:20], rows, [False, True])
    probe = torch.tensor([[0.0, 50.0], [1.0, -50.0]])
    out = state.pixel_scores(probe)
    assert out[0] < out[1]  # only the real column ranks


def test_the_best_mean_over_defect_types_wins_and_ties_keep_the_label_free_setting() -> None:
    per = {"main sensor only": {"bump": 0.9004, "stain": 0.70}, "maximum, offset 0.5": {"bump": 0.90, "stain": 0.70}}
    assert choose_pixel_fusion(per, "maximum, offset 0.5") == "maximum, offset 0.5"  # equal to 3 decimals
    per["main sensor only"]["stain"] = 0.72  # one defect type better, the other as good: the mean decides
    assert choose_pixel_fusion(per, "maximum, offset 0.5") == "main sensor only"
    per["maximum, offset 1"] = {"bump": 0.99, "stain": 0.60}  # mean 0.795 < 0.810
    assert choose_pixel_fusion(per, "maximum, offset 0.5") == "main sensor only"
    assert best_choice({"a": 0.5, "b": 0.6, "c": 0.6}, "a") == "b"  # the first of equals
    assert best_choice({"a": 0.5, "b": 0.505}, "a", margin=0.01) == "a"
    assert best_choice({"a": 0.5, "b": 0.51}, "a", margin=0.01) == "b"


def test_labelled_parts_whose_masks_are_empty_are_ignored_with_a_warning(
        labelled_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from PIL import Image

    root = tmp_path / "copy"
    shutil.copytree(labelled_dataset, root)
    for gt in (root / "ring" / "validation").glob("*/gt/*.png"):
        Image.fromarray(np.zeros(np.asarray(Image.open(gt)).shape, np.uint8)).save(gt)
    train, val, _ = category_splits(root, "ring", with_validation=False)
    det = Detector(_config("f2f", "xyz"), build_encoder(_config("f2f", "xyz"), device="cpu"))
    with caplog.at_level("WARNING"):
        assert det.fit(train, validation=val).pixel_fusion == {}
    assert "mark no defect pixel" in caplog.text
