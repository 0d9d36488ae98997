"""End to end: `cmdiad experiment` with all nine rows on a tiny generated set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cmdiad.cli import main
from cmdiad.pipeline.evaluate import recompute_records
from cmdiad.pipeline.streams import ALL_ROWS


@pytest.fixture(scope="module")
def experiment_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory, tiny_sets) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["experiment", str(tiny_dataset), "--out", str(out), *tiny_sets]) == 0
    return out


def test_every_output_exists(experiment_dir: Path) -> None:
    for name in ("results.json", "results.md", "results.csv", "config.json", "report.html", "timings.json",
                 "timings.md", "run.json"):
        assert (experiment_dir / name).is_file(), name
    records = json.loads((experiment_dir / "results.json").read_text())
    rows = {r["method"] if r["method"] in ("xyz", "rgb", "dual") else f"{r['method']}_{r['main']}"
            for r in records}
    assert rows == set(ALL_ROWS)
    for row in ALL_ROWS:
        raw = np.load(experiment_dir / "raw" / row / "ring.npz")
        n = raw["image_scores"].shape[0]
        assert raw["anomaly_maps"].shape == (n, 64, 64) and raw["gt_masks"].dtype == bool
        assert raw["labels"].sum() > 0 and (raw["labels"] == 0).sum() > 0
        assert raw["anomaly_maps"].dtype == np.float32  # what the metrics were computed from
        assert sorted(set(raw["defects"])) == ["bump", "crack", "dent", "good", "hole", "stain"]
    for r in records:
        assert set(r) >= {"method", "main", "category", "num_test", "i_auroc", "p_auroc", "aupro_30", "aupro_1",
                          "per_defect"}
        assert not set(r) & {"fit_seconds", "ms_per_sample"}  # timings live in timings.json
        assert r["main"] in ("xyz", "rgb", "both") and r["num_test"] == 13
        assert all(0.0 <= r[k] <= 1.0 for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_1"))
        assert set(r["per_defect"]) == {"bump", "crack", "dent", "hole", "stain"}
        assert all(m["num_test"] == 2 for m in r["per_defect"].values())
        if r["method"] in ("f2f", "f2i", "i2f"):  # how the hallucinated map entered the pixels, from its fidelity
            # the default preset: added above its good median, no offset, weighted by r2 clipped to
            # [0, 1], so left out when r2 <= 0 (the floor at -1 lies below that)
            r2 = r["fidelity_r2"]
            weight = min(r2, 1.0)
            expected = ("main sensor only" if r2 <= 0 else "added above gate 0, offset 0"
                        + ("" if weight == 1 else f", weight {weight:.3g}"))
            assert r["pixel_setting"] == expected, r
        else:
            assert "pixel_setting" not in r
    timings = json.loads((experiment_dir / "timings.json").read_text())
    assert len(timings) == len(records) and all(t["fit_seconds"] > 0 for t in timings)
    html = (experiment_dir / "report.html").read_text()
    assert "data:image/png;base64" in html


def test_metrics_recomputed_from_raw_equal_results(experiment_dir: Path) -> None:
    records = json.loads((experiment_dir / "results.json").read_text())
    by_key = {(r["method"], r["main"], r["category"]): r for r in records}
    again = recompute_records(experiment_dir)
    assert len(again) == len(records)
    for r in again:
        ref = by_key[(r["method"], r["main"], r["category"])]
        assert r["num_test"] == ref["num_test"]
        for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_1"):
            # maps are stored as float32, exactly what the experiment computed its metrics from
            assert math.isclose(r[k], ref[k], abs_tol=1e-6), (r, ref, k)
        assert set(r["per_defect"]) == set(ref["per_defect"])
        for defect, metrics in r["per_defect"].items():
            for k, v in metrics.items():
                assert math.isclose(v, ref["per_defect"][defect][k], abs_tol=1e-6), (r, defect, k)


def test_evaluate_cli_prints_per_defect_lines(experiment_dir: Path, capsys) -> None:
    assert main(["evaluate", str(experiment_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("I-AUROC") == len(ALL_ROWS)
    assert out.count("crack") == len(ALL_ROWS) and "n=13" in out and "n=2" in out
    assert out.count("p_auroc_placebo") == out.count(" n=") - len(ALL_ROWS)  # on every defect line


def test_csv_is_flat_and_numeric(experiment_dir: Path) -> None:
    import csv

    rows = list(csv.DictReader((experiment_dir / "results.csv").open()))
    assert len(rows) == len(ALL_ROWS) * 6  # "all" + five defect types per row
    assert {r["defect"] for r in rows} == {"all", "bump", "crack", "dent", "hole", "stain"}
    for r in rows:
        for k in ("num_test", "i_auroc", "p_auroc", "aupro_30", "aupro_1"):
            float(r[k])  # plain numbers, never "np.float64(...)"
        assert "np." not in ",".join(r.values())
        placebo = [r[k] for k in ("p_auroc_placebo", "aupro_30_placebo", "aupro_1_placebo")]
        if r["defect"] == "all":
            assert placebo == ["", "", ""]
        else:
            assert all(0.0 <= float(v) <= 1.0 for v in placebo), r


def test_paper_preset_without_weights_is_a_clear_error(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    rc = main(["experiment", str(tiny_dataset), "--out", str(tmp_path / "o"), "--preset", "paper"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rgb.weights" in err and "xyz.weights" in err


def test_disk_cache_is_reused_and_extraction_time_still_reported(tiny_dataset: Path, tmp_path: Path) -> None:
    from cmdiad.config import DataConfig, DetectorConfig
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.persist import build_encoder
    from cmdiad.pipeline.runs import _extract_all, category_splits

    cfg = DetectorConfig(data=DataConfig(image_size=(64, 64)))
    splits = category_splits(tiny_dataset, "ring", with_validation=False)
    first = build_encoder(cfg, device="cpu", cache=FeatureCache(tmp_path / "cache"), modalities=("xyz",))
    _extract_all(first, splits, ["xyz"], None)
    assert first.cache.misses > 0 and any((tmp_path / "cache").rglob("*.safetensors"))
    second = build_encoder(cfg, device="cpu", cache=FeatureCache(tmp_path / "cache"), modalities=("xyz",))
    _extract_all(second, splits, ["xyz"], None)
    assert second.cache.hits > 0
    assert second.ms_per_sample["xyz"] > 0  # measured on a few samples although all were cached


def test_bad_training_file_stops_or_is_skipped(tiny_dataset: Path, tmp_path: Path, tiny_sets, capsys) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    bad = sorted((root / "ring" / "train" / "good" / "xyz").glob("*.tiff"))[0]
    bad.write_bytes(b"not a tiff")
    args = ["experiment", str(root), "--methods", "xyz", *tiny_sets]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert bad.name in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--set", "data.skip_bad_samples=true"]) == 0
    assert (tmp_path / "b" / "results.json").is_file()


def test_evaluate_uses_the_runs_aupro_mode(experiment_dir: Path, tmp_path: Path) -> None:
    import shutil

    from cmdiad.metrics.segmentation import aupro
    from cmdiad.viz.html import load_raw

    run = tmp_path / "run"
    shutil.copytree(experiment_dir / "raw" / "xyz", run / "raw" / "xyz")
    config = json.loads((experiment_dir / "config.json").read_text())
    config["metrics"]["aupro_mode"] = "official100"
    (run / "config.json").write_text(json.dumps(config))
    raw = load_raw(run / "raw" / "xyz" / "ring.npz")
    (record,) = recompute_records(run)
    assert record["aupro_1"] == aupro(raw.anomaly_maps, raw.gt_masks, 0.01, mode="official100")


def test_second_experiment_on_the_same_cache_decodes_no_image_or_point_cloud(
    tiny_dataset: Path, tmp_path: Path, tiny_sets, monkeypatch
) -> None:
    """`cmdiad experiment --cache DIR` twice: the second run computes its features from the cache
    alone (masks are still read for the metrics) and gives the same scores."""
    import cmdiad.io.mvtec3d as mvtec3d

    args = ["experiment", str(tiny_dataset), "--methods", "dual,f2f_rgb,i2f_xyz", "--cache", str(tmp_path / "c"),
            *tiny_sets]
    reads = {"read_rgb": 0, "read_xyz": 0}
    for name in reads:
        original = getattr(mvtec3d, name)

        def counted(*a, _name=name, _fn=original, **k):
            reads[_name] += 1
            return _fn(*a, **k)

        monkeypatch.setattr(mvtec3d, name, counted)
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert reads["read_rgb"] > 0 and reads["read_xyz"] > 0  # the counters see the first run's reads
    reads.update(read_rgb=0, read_xyz=0)
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert reads == {"read_rgb": 0, "read_xyz": 0}
    first = sorted((tmp_path / "a" / "raw").rglob("*.npz"))
    assert len(first) == 3
    for f in first:
        with np.load(f) as x, np.load(tmp_path / "b" / f.relative_to(tmp_path / "a")) as y:
            assert np.array_equal(x["image_scores"], y["image_scores"])
            assert np.array_equal(x["anomaly_maps"], y["anomaly_maps"])
