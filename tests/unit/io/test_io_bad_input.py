"""Every kind of bad input raises a DatasetError that names the file (or warns and skips)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.io.image import read_mask, read_rgb
from cmdiad.io.mvtec3d import check_record, class_ids, iter_samples, list_categories, list_records, load_sample
from cmdiad.io.pointcloud import read_xyz
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

CFG = SynthConfig(
    categories=("tile",), defects=("crack",), image_size=(24, 24),
    train=2, validation=0, test_good=1, test_per_defect=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    generate_dataset(root, CFG)
    return root


@pytest.fixture
def root(dataset: Path, tmp_path: Path) -> Path:
    shutil.copytree(dataset, tmp_path / "d")
    return tmp_path / "d"


def check(fn, path: Path, problem: str) -> DatasetError:
    with pytest.raises(DatasetError, match=problem) as info:
        fn()
    assert str(path) in str(info.value) and info.value.path == path
    return info.value


def test_missing_rgb_or_xyz_counterpart_when_requested(root: Path) -> None:
    crack = root / "tile" / "test" / "crack"
    (crack / "rgb" / "000.png").unlink()
    (crack / "xyz" / "001.tiff").unlink()
    recs = list_records(root, "tile", "test")[:2]
    check(lambda: load_sample(recs[0], ["rgb"]), crack / "rgb" / "000.png", "has no rgb file")
    check(lambda: load_sample(recs[1], ["rgb", "xyz"]), crack / "xyz" / "001.tiff", "has no xyz file")


def test_defective_sample_without_mask(root: Path) -> None:
    gt = root / "tile" / "test" / "crack" / "gt" / "001.png"
    gt.unlink()
    check(lambda: list_records(root, "tile", "test"), gt, "has no mask")


def test_mask_without_rgb_or_xyz(root: Path) -> None:
    gt = root / "tile" / "test" / "good" / "gt" / "007.png"
    shutil.copy(root / "tile" / "test" / "good" / "gt" / "000.png", gt)
    check(lambda: list_records(root, "tile", "test"), gt, "no rgb or xyz counterpart")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_unreadable_tiff_and_png(root: Path, kind: str) -> None:
    rec = list_records(root, "tile", "train")[0]
    for path in (rec.xyz_path, rec.rgb_path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if kind == "truncated" else b"\x00garbage" * 10)
    check(lambda: read_xyz(rec.xyz_path), rec.xyz_path, "unreadable or truncated TIFF")
    check(lambda: read_rgb(rec.rgb_path), rec.rgb_path, "unreadable or truncated image")
    check(lambda: load_sample(rec), rec.rgb_path, "unreadable")


def test_missing_file(tmp_path: Path) -> None:
    check(lambda: read_xyz(tmp_path / "no.tiff"), tmp_path / "no.tiff", "file not found")


def test_hw_tiff_is_not_an_organized_cloud(tmp_path: Path) -> None:
    path = tmp_path / "d.tiff"
    tifffile.imwrite(path, np.ones((8, 9), np.float32))
    check(lambda: read_xyz(path), path, r"expected an H×W×3 organized point cloud, got shape \(8, 9\)")


def test_integer_tiff(tmp_path: Path) -> None:
    path = tmp_path / "i.tiff"
    tifffile.imwrite(path, np.ones((4, 4, 3), np.uint16), photometric="rgb")
    check(lambda: read_xyz(path), path, "expected float coordinates")


def test_four_channel_png(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(path)
    check(lambda: read_rgb(path), path, "expected 3 channels, got 4")
    check(lambda: read_mask(path), path, "expected a single-channel mask, got 4 channels")


def test_grey_png_becomes_rgb_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(path)
    with caplog.at_level(logging.WARNING):
        rgb = read_rgb(path)
    assert rgb.shape == (4, 5, 3) and (rgb == 7).all() and "grey.png" in caplog.text


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_coordinates(tmp_path: Path, bad: float) -> None:
    xyz = np.ones((4, 4, 3), np.float32)
    xyz[1, 2, 0] = bad
    path = tmp_path / "n.tiff"
    tifffile.imwrite(path, xyz, photometric="minisblack", planarconfig="contig")
    check(lambda: read_xyz(path), path, "1 points have NaN/inf")
    fixed = read_xyz(path, nan_to_zero=True)
    assert (fixed[1, 2] == 0).all() and fixed.sum() == 3 * 15


def test_all_zero_cloud(tmp_path: Path) -> None:
    path = tmp_path / "z.tiff"
    tifffile.imwrite(path, np.zeros((4, 4, 3), np.float32), photometric="minisblack", planarconfig="contig")
    check(lambda: read_xyz(path), path, "all points are zero")


def test_rgb_xyz_size_mismatch_names_both_files(root: Path) -> None:
    rec = list_records(root, "tile", "train")[0]
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(rec.rgb_path)
    err = check(lambda: load_sample(rec), rec.rgb_path, "differs from xyz size")
    assert str(rec.xyz_path) in str(err)
    for alone in (["xyz"], ["rgb"]):  # reading one modality alone still checks the other file's header
        err = check(lambda alone=alone: load_sample(rec, alone), rec.rgb_path, "differs from xyz size")
        assert str(rec.xyz_path) in str(err)
    check(lambda: check_record(rec), rec.rgb_path, "differs from xyz size")


def test_check_record_finds_truncated_files_cheaply(root: Path) -> None:
    rec = list_records(root, "tile", "train")[0]
    check_record(rec)  # a good sample passes
    for path in (rec.xyz_path, rec.rgb_path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        check(lambda: check_record(rec), path, "truncated")
        path.write_bytes(data)


def test_mask_size_mismatch(root: Path) -> None:
    rec = list_records(root, "tile", "test")[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(rec.gt_path)
    check(lambda: load_sample(rec), rec.gt_path, "mask size")


def test_category_without_training_samples(root: Path) -> None:
    train = root / "tile" / "train"
    shutil.rmtree(train / "good")
    (train / "good").mkdir()
    check(lambda: list_records(root, "tile", "train"), train, "no training samples")
    assert len(list_records(root, "tile", "test")) == 3  # test data are still usable


def test_path_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    check(lambda: list_categories(tmp_path), tmp_path, "no category folders")
    check(lambda: list_categories(tmp_path / "nope"), tmp_path / "nope", "not a folder")
    check(lambda: list_records(tmp_path, "stuff2", "train"), tmp_path / "stuff2", "category folder not found")
    (tmp_path / "bagel" / "train").mkdir(parents=True)
    check(lambda: list_records(tmp_path, "bagle", "train"), tmp_path / "bagle", "categories in .*: bagel")


def test_broken_class_ids(root: Path) -> None:
    path = root / "tile" / "class_ids.json"
    path.write_text("[1, 2")
    check(lambda: class_ids(root, "tile"), path, "not a JSON object")


def test_skip_bad_warns_and_skips(root: Path, caplog) -> None:
    recs = list_records(root, "tile", "train")
    recs[0].xyz_path.write_bytes(b"broken")
    with caplog.at_level(logging.WARNING):
        assert load_sample(recs[0], skip_bad=True) is None
        loaded = list(iter_samples(recs, skip_bad=True))
    assert [s.record for s in loaded] == recs[1:]
    assert str(recs[0].xyz_path) in caplog.text
    with pytest.raises(DatasetError):
        list(iter_samples(recs))


def test_labelled_validation_part_without_mask(root: Path) -> None:
    folder = root / "tile" / "validation" / "crack"
    shutil.copytree(root / "tile" / "test" / "crack", folder)
    recs = list_records(root, "tile", "validation")
    assert [r.label for r in recs] == [1, 1] and all(r.gt_path is not None for r in recs)
    (folder / "gt" / "000.png").unlink()
    check(lambda: list_records(root, "tile", "validation"), folder / "gt" / "000.png",
          "defective validation sample '000' has no mask")


def test_training_folder_other_than_good(root: Path) -> None:
    folder = root / "tile" / "train" / "crack"
    shutil.copytree(root / "tile" / "test" / "crack", folder)
    check(lambda: list_records(root, "tile", "train"), folder, "training parts must be good")
