"""Eyecandies conversion on a tiny fake release with a known scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.io.eyecandies import convert_eyecandies, read_depth, read_simple_yaml
from cmdiad.io.mvtec3d import list_records, load_sample

SIZE = 32
# world: table is the plane y = 0, objects have y < 0; the camera sits at y = -1 looking along +y
POSE = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=float)
YAML = "# render info\nnormalization:\n  max: 1.1\n  min: 0.9\nother: text\n"


def _write_sample(data: Path, sid: str, defect: bool, rng: np.random.Generator) -> None:
    data.mkdir(parents=True, exist_ok=True)
    depth = np.full((SIZE, SIZE), 1.0)
    depth[10:22, 8:20] = 0.95  # a 5 cm high box (world y = -0.05)
    raw = np.rint((depth - 0.9) / 0.2 * 65535).astype(np.uint16)
    Image.fromarray(raw).save(data / f"{sid}_depth.png")
    (data / f"{sid}_info_depth.yaml").write_text(YAML)
    np.savetxt(data / f"{sid}_pose.txt", POSE)
    for k in (0, 4):
        img = (
            rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            if k == 4
            else np.zeros((SIZE, SIZE, 3), np.uint8)
        )
        Image.fromarray(img).save(data / f"{sid}_image_{k}.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[12:15, 10:13] = 255 if defect else 0
    Image.fromarray(mask).save(data / f"{sid}_mask.png")


@pytest.fixture
def release(tmp_path: Path, rng: np.random.Generator) -> Path:
    src = tmp_path / "eyecandies"
    for sid in ("000", "001"):
        _write_sample(src / "CandyCane" / "train" / "data", sid, False, rng)
    _write_sample(src / "CandyCane" / "test_public" / "data", "000", True, rng)
    _write_sample(src / "CandyCane" / "test_public" / "data", "001", False, rng)
    return src


def test_conversion_layout_and_geometry(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    counts = convert_eyecandies(release, out)
    assert counts == {"CandyCane": {"train/good": 2, "test/bad": 1, "test/good": 1}}
    assert len(list_records(out, "CandyCane", "train")) == 2
    assert list_records(out, "CandyCane", "validation") == []
    test = list_records(out, "CandyCane", "test")
    assert [(r.defect, r.stem) for r in test] == [("bad", "000"), ("good", "001")]
    bad = load_sample(test[0])
    assert bad.xyz.shape == (SIZE, SIZE, 3) and bad.rgb.shape == (SIZE, SIZE, 3)
    src = release / "CandyCane" / "test_public" / "data"
    assert np.array_equal(bad.rgb, np.asarray(Image.open(src / "000_image_4.png")))
    assert np.array_equal(bad.mask, np.asarray(Image.open(src / "000_mask.png")) > 0)
    box = np.zeros((SIZE, SIZE), bool)
    box[10:22, 8:20] = True
    assert (bad.xyz[~box] == 0).all()  # background is exactly zero (fix of the reference bug)
    np.testing.assert_allclose(bad.xyz[box][:, 2], -0.005, atol=1e-5)  # world y * 0.1
    u = np.arange(SIZE)[8:20] - SIZE / 2
    np.testing.assert_allclose(bad.xyz[15, 8:20, 0], 0.1 * u * 0.95 / 711.11, atol=1e-6)


def test_category_filter_and_errors(release: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Lollipop"):
        convert_eyecandies(release, tmp_path / "o", categories=["Lollipop"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Eyecandies category"):
        convert_eyecandies(tmp_path / "empty", tmp_path / "o")
    yaml = release / "CandyCane" / "train" / "data" / "000_info_depth.yaml"
    yaml.write_text("other: 1\n")
    with pytest.raises(DatasetError, match="normalization") as info:
        convert_eyecandies(release, tmp_path / "o3")
    assert info.value.path == yaml


def test_simple_yaml_and_depth_scaling(release: Path) -> None:
    data = release / "CandyCane" / "train" / "data"
    parsed = read_simple_yaml(data / "000_info_depth.yaml")
    assert parsed == {"normalization": {"max": 1.1, "min": 0.9}, "other": "text"}
    depth = read_depth(data / "000_depth.png", data / "000_info_depth.yaml")
    np.testing.assert_allclose(depth[0, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(depth[15, 15], 0.95, atol=1e-5)
