"""What predict reads from the paths a user gives: names, splits and defect types kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdiad.errors import ConfigError, DatasetError
from cmdiad.pipeline.inputs import items_from_inputs
from cmdiad.synthetic.generator import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    generate_dataset(root, SynthConfig(categories=("ring", "tile"), defects=("stain", "crack"), image_size=(16, 16),
                                       train=2, validation=1, test_good=1, test_per_defect=2))
    return root


def test_dataset_root_gives_test_split_only_with_defect_types(dataset: Path) -> None:
    items = items_from_inputs([dataset])
    assert {i.record.split for i in items} == {"test"}
    assert {i.record.category for i in items} == {"ring", "tile"}
    named = {i.name: i.record for i in items}
    assert named["ring/test/stain/001"].defect == "stain" and named["ring/test/stain/001"].modalities == {"rgb", "xyz"}
    assert len(items) == 2 * (1 + 2 * 2)


def test_splits_are_chosen_explicitly(dataset: Path) -> None:
    items = items_from_inputs([dataset / "ring"], splits=("train", "test"))
    assert {i.record.split for i in items} == {"train", "test"}
    assert all(i.name.startswith(("train/good/", "test/")) for i in items)
    with pytest.raises(ConfigError, match="unknown split"):
        items_from_inputs([dataset], splits=("tset",))


def test_plain_folder_of_images_is_scored(dataset: Path) -> None:
    items = items_from_inputs([dataset / "ring" / "test" / "stain" / "rgb"])
    assert [i.name for i in items] == ["stain/000", "stain/001"]
    assert all(i.record.modalities == {"rgb"} and i.record.defect == "stain" for i in items)


def test_sample_folder_and_loose_files(dataset: Path) -> None:
    folder = dataset / "tile" / "test" / "crack"
    items = items_from_inputs([folder])
    assert [i.name for i in items] == ["crack/000", "crack/001"] and items[0].record.defect == "crack"
    loose = items_from_inputs([folder / "rgb" / "000.png", folder / "xyz" / "000.tiff"])
    assert len(loose) == 1 and loose[0].record.modalities == {"rgb", "xyz"}


def test_repeated_names_are_made_unique(dataset: Path) -> None:
    folder = dataset / "tile" / "test" / "crack"
    names = [i.name for i in items_from_inputs([folder, folder])]
    assert len(set(names)) == len(names) == 4


def test_empty_or_missing_inputs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no samples found") as info:
        items_from_inputs([tmp_path])
    assert info.value.path == tmp_path
    with pytest.raises(DatasetError, match="does not exist"):
        items_from_inputs([tmp_path / "nope"])
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        items_from_inputs([tmp_path / "a.bmp"])
