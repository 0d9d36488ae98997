"""Deployments a user can trust: whole model folders, calibrated heatmaps, per-file predict errors.

Bad-input tests check the exit code, that no traceback is printed, that the message names the
file and that no input file changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from cmdiad.cli import main

TINY = ["--set", "data.image_size=[64,64]", "--set", "memory.coreset.ratio=0.5"]
MTFI = ["--set", "distill.epochs=1", "--set", "distill.width=8", "--set", "distill.trunk_width=4",
        "--set", "distill.trunk_blocks=1"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fit(data: Path, out: Path, method: str, *extra: str) -> int:
    return main(["fit", str(data), "--category", "ring", "--method", method, "--out", str(out), *TINY, *extra])


def _bad(capsys, argv: list[str], code: int, *names: Path | str, inputs: Path | None = None) -> str:
    """Run a command that must fail cleanly; returns its stderr."""
    before = _tree(inputs) if inputs is not None else None
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, err
    if inputs is not None:
        assert _tree(inputs) == before
    return err


@pytest.fixture(scope="module")
def models(tiny_dataset: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {m: root / m for m in ("rgb", "xyz")}
    for m, path in out.items():
        assert _fit(tiny_dataset, path, m) == 0
    return out


@pytest.fixture
def data(tiny_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def _predict(model: Path, out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    assert main(["predict", str(model), *map(str, inputs), "--out", str(out), *extra]) == 0
    return json.loads((out / "predictions.json").read_text())


# ----------------------------------------------------------------------------- 1. model folders
def test_refit_replaces_the_whole_model(tiny_dataset: Path, models, tmp_path: Path, capsys) -> None:
    model = tmp_path / "m"
    assert _fit(tiny_dataset, model, "f2f", *MTFI) == 0
    first = set(load_file(str(model / "model.safetensors")))
    assert any(k.startswith("hallucinator.net.") for k in first) and "banks.rgb_from_xyz.bank" in first
    assert _fit(tiny_dataset, model, "rgb") == 0
    assert sorted(p.name for p in model.iterdir()) == ["detector.json", "model.safetensors"]
    assert {k.split(".")[1] for k in load_file(str(model / "model.safetensors")) if k.startswith("banks.")} == {"rgb"}
    # A model set (router.json + routes) replaced by a single detector: the set is gone entirely.
    shutil.rmtree(model)
    shutil.copytree(models["xyz"], model / "xyz")
    (model / "router.json").write_text(json.dumps({"format": "cmdiad-router", "routes": ["xyz"]}))
    assert _fit(tiny_dataset, model, "rgb") == 0
    assert not (model / "router.json").exists() and not (model / "xyz").exists()
    rows = _predict(model, tmp_path / "p", tiny_dataset / "ring" / "test" / "good")
    assert {r["route"] for r in rows} == {"rgb"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "p"]  # no temp folder left beside it


def test_fit_refuses_a_folder_that_is_not_a_model(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    _bad(capsys, ["fit", str(tiny_dataset), "--category", "ring", "--method", "rgb", "--out", str(target), *TINY],
         2, target, inputs=tmp_path)
    assert (target / "notes.txt").read_text() == "my notes"


def test_model_files_get_umask_permissions(models) -> None:
    for path in [models["rgb"], *models["rgb"].rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path} is {oct(mode)}"  # readable by group/others under a 022 umask


# ----------------------------------------------------------------------------- 2. calibrated heatmaps
def test_heatmap_colours_do_not_depend_on_the_batch(tiny_dataset: Path, models, tmp_path: Path) -> None:
    meta = json.loads((models["xyz"] / "detector.json").read_text())
    cal = meta["map_calibration"]
    # calibrated fusion centres each stream on good samples, so the median good pixel is near 0
    assert math.isfinite(cal["good_p50"]) and cal["good_p50"] < cal["good_p999"]
    test = tiny_dataset / "ring" / "test"
    one = test / "good" / "xyz" / "000.tiff"
    alone = _predict(models["xyz"], tmp_path / "alone", one)
    batch = _predict(models["xyz"], tmp_path / "batch", test / "good", test / "hole")
    assert alone[0]["heatmaps"] == ["heatmaps/000_depth.png"]
    a = np.asarray(Image.open(tmp_path / "alone" / alone[0]["heatmaps"][0]))
    match = next(r for r in batch if r["xyz"] == str(one))
    b = np.asarray(Image.open(tmp_path / "batch" / "heatmaps" / "good_000_depth.png"))
    assert "heatmaps/good_000_depth.png" in match["heatmaps"]
    np.testing.assert_array_equal(a, b)
    assert a.shape[0] >= 256 + 40  # enlarged image plus the strip with verdict and colour bar


# ----------------------------------------------------------------------------- 3. size mismatch
def test_rgb_xyz_size_mismatch_is_refused_in_fit_and_reported_in_predict(data: Path, models, tmp_path: Path,
                                                                         capsys) -> None:
    bad = data / "ring" / "train" / "good" / "rgb" / "001.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(bad)
    other = data / "ring" / "train" / "good" / "xyz" / "001.tiff"
    for method in ("rgb", "xyz"):  # each loads one modality alone; the other file's header is still checked
        _bad(capsys, ["fit", str(data), "--category", "ring", "--method", method, "--out", str(tmp_path / "m"), *TINY],
             2, bad, other, inputs=data)
    assert not (tmp_path / "m").exists()
    out = tmp_path / "p"
    assert main(["predict", str(models["xyz"]), str(data / "ring" / "train" / "good"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert str(bad) in err and str(other) in err and "Traceback" not in err
    rows = json.loads((out / "predictions.json").read_text())
    assert sum(r["score"] is None for r in rows) == 1 and sum(r["score"] is not None for r in rows) == len(rows) - 1


# ----------------------------------------------------------------------------- 5. per-file predict errors
def test_predict_reports_each_bad_file_and_scores_the_rest(data: Path, models, tmp_path: Path, capsys) -> None:
    good = data / "ring" / "test" / "good"
    truncated = good / "xyz" / "001.tiff"
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = tmp_path / "p"
    before = _tree(data)
    assert main(["predict", str(models["xyz"]), str(good), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"bad file {truncated}" in err and "Traceback" not in err and "ring/" not in err.split(str(truncated))[0]
    rows = json.loads((out / "predictions.json").read_text())
    scored = [r for r in rows if r["score"] is not None]
    assert len(scored) == len(rows) - 1 and all(r["heatmaps"] for r in scored)
    assert str(truncated) in next(r["error"] for r in rows if r["score"] is None)
    assert _tree(data) == before
    # Nothing scorable at all: a non-zero exit.
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(truncated, only / "001.tiff")
    _bad(capsys, ["predict", str(models["xyz"]), str(only), "--out", str(tmp_path / "q")], 1,
         only / "001.tiff", "no sample could be scored")


def test_model_set_scores_with_the_other_modality_when_one_file_is_bad(data: Path, models, tmp_path: Path,
                                                                       capsys) -> None:
    model = tmp_path / "set"
    model.mkdir()
    for m in ("rgb", "xyz"):
        shutil.copytree(models[m], model / m)
    (model / "router.json").write_text(json.dumps({"format": "cmdiad-router", "routes": ["rgb", "xyz"]}))
    good = data / "ring" / "test" / "good"
    (good / "xyz" / "000.tiff").write_bytes(b"not a tiff at all")
    np_nan = np.full((64, 64, 3), np.nan, np.float32)  # passes the cheap check, fails the full read
    import tifffile

    tifffile.imwrite(good / "xyz" / "001.tiff", np_nan, photometric="minisblack", planarconfig="contig")
    rows = _predict(model, tmp_path / "p", good)
    routes = {r["sample"]: r["route"] for r in rows}
    assert routes == {"good/000": "rgb", "good/001": "rgb", "good/002": "xyz"}
    assert all(isinstance(r["score"], float) for r in rows)
    err = capsys.readouterr().err
    assert str(good / "xyz" / "000.tiff") in err and str(good / "xyz" / "001.tiff") in err


# ----------------------------------------------------------------------------- 6. predict output folder
def test_predict_output_is_fresh_and_foreign_folders_are_refused(tiny_dataset: Path, models, tmp_path: Path,
                                                                 capsys) -> None:
    test = tiny_dataset / "ring" / "test"
    out = tmp_path / "p"
    _predict(models["xyz"], out, test)
    assert len(list((out / "heatmaps").iterdir())) > 2
    rows = _predict(models["xyz"], out, test / "good" / "xyz" / "000.tiff")
    assert [p.name for p in (out / "heatmaps").iterdir()] == [Path(rows[0]["heatmaps"][0]).name]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    _bad(capsys, ["predict", str(models["xyz"]), str(test / "good"), "--out", str(mine)], 2, mine, "--overwrite",
         inputs=tmp_path)
    _predict(models["xyz"], mine, test / "good", extra=("--overwrite",))
    assert (mine / "thesis.tex").read_text() == "keep me" and (mine / "predictions.json").is_file()


# ----------------------------------------------------------------------------- 8. threshold samples
def test_threshold_sample_count_is_recorded_and_warned_about(tiny_dataset: Path, models, tmp_path: Path,
                                                             capsys) -> None:
    meta = json.loads((models["rgb"] / "detector.json").read_text())
    assert meta["threshold_samples"] == 3  # the tiny set's validation/good samples
    assert _fit(tiny_dataset, tmp_path / "m", "rgb", "--frr", "0.2") == 0
    captured = capsys.readouterr()
    assert "set by 3 good validation samples" in captured.out
    assert "only 3 good samples" in captured.err and "at least 20" in captured.err


# ----------------------------------------------------------------------------- 9. model-file errors
@pytest.mark.parametrize(("file", "key", "value"), [("detector.json", "threshold", "high"),
                                                    ("detector.json", "map_calibration", [1, 2]),
                                                    ("detector.json", "banks", {"xyz": [3]})])
def test_wrong_types_in_model_json_are_one_clear_error(models, tmp_path: Path, tiny_dataset: Path, capsys,
                                                       file, key, value) -> None:
    model = Path(shutil.copytree(models["xyz"], tmp_path / "m"))
    meta = json.loads((model / file).read_text())
    meta[key] = value
    (model / file).write_text(json.dumps(meta))
    _bad(capsys, ["predict", str(model), str(tiny_dataset / "ring" / "test" / "good"), "--out",
                  str(tmp_path / "p")], 2, model / file, inputs=model)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("content", [b"\x80\x02garbage" * 50, b"hello, not a checkpoint\n"])
def test_garbage_weights_file_is_one_clear_error(tiny_dataset: Path, tmp_path: Path, capsys, content) -> None:
    weights = tmp_path / "pointmae.pth"
    weights.write_bytes(content)
    err = _bad(capsys, ["fit", str(tiny_dataset), "--category", "ring", "--method", "xyz", "--out",
                        str(tmp_path / "m"), *TINY, "--set", "xyz.name=point_mae", "--set", f"xyz.weights={weights}"],
               2, weights, inputs=tmp_path)
    assert "weights_only" not in err and not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- 12. fast, early errors
def test_bad_dataset_category_and_files_fail_before_any_model_is_built(data: Path, tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    import cmdiad.pipeline.persist as persist

    monkeypatch.setattr(persist, "build_encoder", lambda *a, **k: pytest.fail("extractors built before checks"))
    out = tmp_path / "m"
    fit = ["--method", "xyz", "--out", str(out), *TINY]
    _bad(capsys, ["fit", str(tmp_path / "nope"), "--category", "ring", *fit], 2, tmp_path / "nope")
    err = _bad(capsys, ["fit", str(data), "--category", "rnig", *fit], 2, data / "rnig", inputs=data)
    assert "categories in" in err and "ring" in err
    truncated = data / "ring" / "validation" / "good" / "xyz" / "002.tiff"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    _bad(capsys, ["fit", str(data), "--category", "ring", *fit], 2, truncated, "truncated", inputs=data)
    assert not out.exists()


# ----------------------------------------------------------------------------- 14, 16. what predict reads
def test_predict_on_a_category_scores_test_only_and_names_after_the_source(tiny_dataset: Path, models,
                                                                           tmp_path: Path) -> None:
    rows = _predict(models["rgb"], tmp_path / "p", tiny_dataset / "ring")
    assert {r["split"] for r in rows} == {"test"} and "stain" in {r["defect"] for r in rows}
    row = next(r for r in rows if r["sample"] == "test/stain/000")
    assert row["heatmaps"] == ["heatmaps/test_stain_000_rgb.png", "heatmaps/test_stain_000_depth.png"]
    more = _predict(models["rgb"], tmp_path / "q", tiny_dataset / "ring", extra=("--splits", "train,test"))
    assert {r["split"] for r in more} == {"train", "test"}
    plain = _predict(models["rgb"], tmp_path / "r", tiny_dataset / "ring" / "test" / "stain" / "rgb")
    assert [r["sample"] for r in plain] == ["stain/000", "stain/001"] and all(r["score"] for r in plain)
