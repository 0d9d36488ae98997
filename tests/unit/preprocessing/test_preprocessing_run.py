"""Out-of-place dataset preprocessing: source untouched, reproducible, idempotent, robust."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.io.mvtec3d import list_records, load_sample
from cmdiad.preprocessing.pointcloud import valid_points
from cmdiad.preprocessing.run import preprocess_dataset
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

CFG = SynthConfig(
    categories=("ring", "dome"), defects=("dent", "hole"), image_size=(120, 150),
    train=2, validation=1, test_good=1, test_per_defect=1,
)  # fmt: skip


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    generate_dataset(root, CFG)
    return root


@pytest.fixture(scope="module")
def processed(source: Path, tmp_path_factory) -> tuple[Path, dict[str, str], list]:
    before = tree_hashes(source)
    out = tmp_path_factory.mktemp("pp") / "out"
    calls = []
    report = preprocess_dataset(source, out, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert tree_hashes(source) == before  # the source is never modified
    return out, report, calls


def test_output_tree(source: Path, processed) -> None:
    out, report, calls = processed
    assert report.failures == [] and len(report.processed) == 2 * 6
    assert calls[-1] == (12, 12)
    for name in ("class_ids.json", "calibration/camera_parameters.json"):
        assert (out / "ring" / name).read_bytes() == (source / "ring" / name).read_bytes()
    for split in ("train", "validation", "test"):
        src_recs, out_recs = list_records(source, "dome", split), list_records(out, "dome", split)
        assert [r.key for r in src_recs] == [r.key for r in out_recs]


def test_plane_removed_object_and_mask_kept(source: Path, processed) -> None:
    out, _, _ = processed
    for src_rec, out_rec in zip(
        list_records(source, "ring", "test"), list_records(out, "ring", "test"), strict=True
    ):
        before, after = load_sample(src_rec), load_sample(out_rec)
        assert after.xyz.shape == (200, 200, 3) and after.rgb.shape == (200, 200, 3)
        valid = valid_points(after.xyz)
        assert 0.05 < valid.mean() < 0.3  # table gone, object left
        z = after.xyz[valid, 2]
        assert z.max() - z.min() > 0.005
        assert (after.rgb[valid_points(np.pad(before.xyz, ((40, 40), (25, 25), (0, 0)))) & ~valid] == 0).all()
        assert after.mask.sum() == before.mask.sum() and after.mask[40:160, 25:175].sum() == before.mask.sum()
        grey_before = np.asarray(Image.open(src_rec.gt_path))
        assert np.unique(np.asarray(Image.open(out_rec.gt_path))).tolist() == np.unique(grey_before).tolist()


def test_second_run_changes_nothing(processed, tmp_path: Path) -> None:
    out, _, _ = processed
    report = preprocess_dataset(out, tmp_path / "again", workers=1, seed=123)
    assert report.failures == []
    assert tree_hashes(tmp_path / "again") == tree_hashes(out)


@pytest.mark.slow
def test_worker_count_does_not_change_the_result(source: Path, processed, tmp_path: Path) -> None:
    out, _, _ = processed
    report = preprocess_dataset(source, tmp_path / "w2", workers=2)
    assert report.failures == [] and tree_hashes(tmp_path / "w2") == tree_hashes(out)


def test_refuses_in_place_and_nested_outputs(source: Path, tmp_path: Path) -> None:
    for bad in (source, source / "ring" / "processed", source.parent):
        with pytest.raises(DatasetError, match="output folder") as info:
            preprocess_dataset(source, bad)
        assert info.value.path == bad.resolve()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        preprocess_dataset(source, tmp_path / "full")
    with pytest.raises(DatasetError, match="no category folders"):
        preprocess_dataset(tmp_path / "full", tmp_path / "o")


def test_failures_are_reported_without_aborting(source: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    shutil.rmtree(src / "dome")
    broken = src / "ring" / "train" / "good" / "xyz" / "001.tiff"
    broken.write_bytes(b"broken")
    (src / "ring" / "validation" / "good" / "rgb" / "000.png").unlink()  # rgb-less sample still processed
    report = preprocess_dataset(src, tmp_path / "out", workers=1)
    assert [p for p, _ in report.failures] == [broken] and "unreadable" in report.failures[0][1]
    assert len(report.processed) == 5
    assert not (tmp_path / "out" / "ring" / "train" / "good" / "xyz" / "001.tiff").exists()
    assert (tmp_path / "out" / "ring" / "validation" / "good" / "xyz" / "000.tiff").is_file()
