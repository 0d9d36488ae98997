"""Record discovery and sample loading on a small generated MVTec-3D-style dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cmdiad.errors import DatasetError
from cmdiad.io.image import read_mask, read_rgb, write_mask, write_rgb
from cmdiad.io.mvtec3d import iter_samples, list_categories, list_records, load_sample, native_size
from cmdiad.io.pointcloud import read_xyz, write_xyz, xyz_to_depth
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

CFG = SynthConfig(
    categories=("ring", "dome"), defects=("bump", "stain"), image_size=(32, 40),
    train=3, validation=2, test_good=2, test_per_defect=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, CFG)
    return root


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    shutil.copytree(dataset, tmp_path / "d")
    return tmp_path / "d"


def test_counts_order_and_labels(dataset: Path) -> None:
    assert list_categories(dataset) == ["dome", "ring"]
    train = list_records(dataset, "ring", "train")
    assert [r.stem for r in train] == ["000", "001", "002"]
    assert {r.defect for r in train} == {"good"} and all(r.gt_path is None for r in train)
    test = list_records(dataset, "ring", "test")
    assert [r.defect for r in test] == ["bump"] * 2 + ["good"] * 2 + ["stain"] * 2  # sorted folders
    assert [r.label for r in test] == [1, 1, 0, 0, 1, 1]
    assert all(r.rgb_path.stem == r.xyz_path.stem == r.gt_path.stem == r.stem for r in test)
    assert len(list_records(dataset, "ring", "validation")) == 2


def test_loaded_arrays(dataset: Path) -> None:
    rec = list_records(dataset, "dome", "test")[0]
    sample = load_sample(rec)
    assert sample.rgb.shape == (32, 40, 3) and sample.rgb.dtype == np.uint8
    assert sample.xyz.shape == (32, 40, 3) and sample.xyz.dtype == np.float32
    assert sample.mask.shape == (32, 40) and sample.mask.dtype == bool and sample.mask.any()
    good = load_sample(list_records(dataset, "dome", "train")[0])
    assert good.mask.shape == (32, 40) and not good.mask.any()
    assert np.array_equal(xyz_to_depth(good.xyz), good.xyz[..., 2])


def test_missing_modality_files_give_marked_records(copy: Path) -> None:
    good = copy / "ring" / "train" / "good"
    (good / "rgb" / "001.png").unlink()
    (good / "xyz" / "002.tiff").unlink()
    recs = {r.stem: r for r in list_records(copy, "ring", "train")}
    assert recs["000"].modalities == {"rgb", "xyz"}
    assert recs["001"].modalities == {"xyz"} and recs["001"].rgb_path is None
    assert recs["002"].modalities == {"rgb"} and recs["002"].xyz_path is None
    assert load_sample(recs["001"]).rgb is None  # loads what exists
    assert [r.stem for r in list_records(copy, "ring", "train", require=["rgb", "xyz"])] == ["000"]
    assert [r.stem for r in list_records(copy, "ring", "train", require=["xyz"])] == ["000", "001"]


def test_few_modal_loading_never_opens_the_other_file(copy: Path) -> None:
    rec = list_records(copy, "ring", "test")[0]
    rec.rgb_path.write_bytes(b"not a png")  # would raise if it were opened
    sample = load_sample(rec, ["xyz"])
    assert sample.rgb is None and sample.xyz is not None and sample.mask.any()
    assert load_sample(rec, ["xyz"]).mask.shape == sample.xyz.shape[:2]


def test_eyecandies_like_layout_without_validation(copy: Path) -> None:
    shutil.rmtree(copy / "ring" / "validation")
    assert list_records(copy, "ring", "validation") == []
    assert len(list_records(copy, "ring", "train")) == 3


def test_iter_samples_loads_in_order(dataset: Path) -> None:
    recs = list_records(dataset, "ring", "test")
    assert [s.record for s in iter_samples(recs, ["rgb"])] == recs


def test_writers_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    xyz = rng.normal(size=(5, 6, 3)).astype(np.float32)
    mask = rng.random((5, 6)) > 0.5
    write_rgb(tmp_path / "a" / "x.png", rgb)
    write_xyz(tmp_path / "b" / "x.tiff", xyz)
    write_mask(tmp_path / "c" / "x.png", mask)
    assert np.array_equal(read_rgb(tmp_path / "a" / "x.png"), rgb)
    assert np.array_equal(read_xyz(tmp_path / "b" / "x.tiff"), xyz)
    assert np.array_equal(read_mask(tmp_path / "c" / "x.png"), mask)


def test_native_size_is_the_smallest_first_training_part(copy: Path, rng) -> None:
    assert native_size(copy) == (32, 40)
    write_rgb(copy / "ring" / "train" / "good" / "rgb" / "000.png", rng.integers(0, 255, (24, 48, 3), dtype=np.uint8))
    assert native_size(copy) == (24, 40)  # the smaller height of ring, the smaller width of dome
    shutil.rmtree(copy / "dome" / "train" / "good" / "rgb")  # a scan-only category: its cloud's header
    write_xyz(copy / "dome" / "train" / "good" / "xyz" / "000.tiff", np.ones((20, 44, 3), np.float32))
    assert native_size(copy) == (20, 44)


def test_native_size_names_the_unreadable_file(copy: Path) -> None:
    bad = copy / "dome" / "train" / "good" / "rgb" / "000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="000.png"):
        native_size(copy)
