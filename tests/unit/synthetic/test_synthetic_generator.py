"""The synthetic generator: layout, determinism, pixel-exact masks, modality of each defect."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cmdiad.io.mvtec3d import class_ids, list_categories, list_records, load_sample
from cmdiad.synthetic.defects import APPEARANCE_ONLY, BOTH, DEFECT_TYPES, GEOMETRY_ONLY
from cmdiad.synthetic.generator import SynthConfig, dataset_settings, generate_dataset, render_sample

SMALL = SynthConfig(image_size=(64, 80), train=3, validation=1, test_good=2, test_per_defect=1)


def _changed(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose rgb / xyz differ between two renders."""
    return (a[0] != b[0]).any(-1), (a[1] != b[1]).any(-1)


@pytest.mark.parametrize("category", SMALL.categories)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_pixels(category: str, defect: str) -> None:
    cfg = SynthConfig(image_size=(96, 96))
    good = render_sample(category, cfg, 11, None)
    bad = render_sample(category, cfg, 11, defect)
    rgb_changed, xyz_changed = _changed(good, bad)
    mask = bad[2]
    assert mask.any()
    assert np.array_equal(mask, rgb_changed | xyz_changed)
    if defect in GEOMETRY_ONLY:
        assert not rgb_changed.any() and np.array_equal(mask, xyz_changed)
    if defect in APPEARANCE_ONLY:
        assert not xyz_changed.any() and np.array_equal(mask, rgb_changed)
    if defect in BOTH:
        assert np.array_equal(mask, rgb_changed) and np.array_equal(mask, xyz_changed)


@pytest.mark.parametrize("defect", GEOMETRY_ONLY)
def test_geometry_shading_lets_a_fraction_of_the_shading_through(defect: str) -> None:
    def rgb(weight: float) -> np.ndarray:
        return render_sample("dome", SynthConfig(image_size=(96, 96), geometry_shading=weight), 5, defect)[0]

    good = render_sample("dome", SynthConfig(image_size=(96, 96)), 5, None)
    mask = render_sample("dome", SynthConfig(image_size=(96, 96)), 5, defect)[2]
    assert np.array_equal(rgb(0.0), good[0])  # the default: the camera cannot see the defect
    change = {w: np.abs(rgb(w).astype(int) - good[0]).sum(-1) for w in (0.25, 1.0)}
    for w, diff in change.items():
        assert not diff[~mask].any() and diff[mask].any(), w  # inside the footprint only
    assert 0.1 < change[0.25].sum() / change[1.0].sum() < 0.4  # about a quarter of the full change
    with pytest.raises(ValueError, match="geometry_shading"):
        SynthConfig(geometry_shading=1.5)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_a_null_twin_is_the_good_render_with_the_defects_mask(defect: str) -> None:
    cfg = SynthConfig(image_size=(96, 96))
    twin_cfg = SynthConfig(image_size=(96, 96), null_twins=True, geometry_shading=0.5)
    good = render_sample("ring", cfg, 8, None)
    bad = render_sample("ring", cfg, 8, defect)
    twin = render_sample("ring", twin_cfg, 8, defect)
    assert np.array_equal(twin[2], bad[2]) and twin[2].any()  # the defect's mask
    assert np.array_equal(twin[0], good[0])  # not a grey level of the defect in the image
    differs = (twin[1] != good[1]).any(-1)
    if defect in APPEARANCE_ONLY:
        assert not differs.any()
    else:  # only the footprint's dropouts are observed, as on the defective part, at the good surface
        assert (differs <= bad[2]).all() and (twin[1][differs] != bad[1][differs]).any(-1).all()
    assert all(np.array_equal(a, b) for a, b in zip(render_sample("ring", twin_cfg, 8, None), good, strict=True))


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = render_sample("ring", SMALL, 3, "crack")
    b = render_sample("ring", SMALL, 3, "crack")
    c = render_sample("ring", SMALL, 4, "crack")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_render_shapes_units_and_invalid_points() -> None:
    rgb, xyz, mask = render_sample("dome", SynthConfig(image_size=(48, 72)), 0)
    assert rgb.shape == (48, 72, 3) and rgb.dtype == np.uint8
    assert xyz.shape == (48, 72, 3) and xyz.dtype == np.float32
    assert mask.shape == (48, 72) and not mask.any()
    invalid = (xyz == 0).all(-1)
    assert invalid[:, 0].all() and invalid[:, -1].all()  # scanner's invalid side columns
    z = xyz[~invalid, 2]
    assert 0.2 < z.min() and z.max() < 0.4  # metres, like MVTec 3D-AD
    assert z.max() - z.min() > 0.02  # an object stands out of the table


def test_generated_dataset_loads_through_the_mvtec_loader(tmp_path) -> None:
    summary = generate_dataset(tmp_path, SMALL)
    assert list_categories(tmp_path) == sorted(SMALL.categories)
    cat = "tile"
    assert summary["counts"][cat]["train/good"] == 3
    assert len(list_records(tmp_path, cat, "train")) == 3
    assert len(list_records(tmp_path, cat, "validation")) == 1
    test = list_records(tmp_path, cat, "test")
    assert len(test) == 2 + len(DEFECT_TYPES)
    assert sorted({r.defect for r in test}) == sorted(("good",) + DEFECT_TYPES)
    ids = class_ids(tmp_path, cat)
    assert ids[0] == "good" and ids[255] == DEFECT_TYPES[0]
    assert (tmp_path / cat / "calibration" / "camera_parameters.json").is_file()
    for rec in test:
        sample = load_sample(rec)
        assert sample.rgb.shape == (64, 80, 3) and sample.rgb.dtype == np.uint8
        assert sample.xyz.shape == (64, 80, 3) and sample.xyz.dtype == np.float32
        assert sample.mask.dtype == bool and sample.mask.any() == bool(rec.label)
        assert rec.modalities == {"rgb", "xyz"}
        grey = np.unique(np.asarray(Image.open(rec.gt_path)))
        if rec.label:  # gt pixels carry the defect's grey value from class_ids.json
            assert ids[int(grey.max())] == rec.defect and set(grey) <= {0, int(grey.max())}
    assert json.loads((tmp_path / cat / "class_ids.json").read_text())["0"] == "good"


def test_generate_refuses_existing_category_folders(tmp_path) -> None:
    cfg = SynthConfig(
        categories=("ring",), image_size=(32, 32), train=1, validation=0, test_good=0, test_per_defect=0
    )
    generate_dataset(tmp_path, cfg)
    with pytest.raises(FileExistsError, match="ring"):
        generate_dataset(tmp_path, cfg)


def test_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="teapot"):
        SynthConfig(categories=("teapot",))


@pytest.mark.slow
def test_default_dataset_generates_quickly(tmp_path) -> None:
    start = time.perf_counter()
    seen = []
    summary = generate_dataset(tmp_path, progress=lambda done, total: seen.append((done, total)))
    elapsed = time.perf_counter() - start
    total = sum(sum(c.values()) for c in summary["counts"].values())
    assert seen[-1] == (total, total) and total == 3 * (30 + 6 + 12 + 6 * len(DEFECT_TYPES))
    assert elapsed < 30


def test_labelled_validation_parts_leave_every_other_sample_as_it_was(tmp_path) -> None:
    small = SynthConfig(categories=("ring",), image_size=(32, 32), train=2, validation=1, test_good=1,
                        test_per_defect=1, defects=("bump", "stain"))
    generate_dataset(tmp_path / "plain", small)
    summary = generate_dataset(tmp_path / "lab", SynthConfig(**{**small.__dict__, "validation_per_defect": 2}))
    assert summary["counts"]["ring"]["validation/bump"] == 2
    val = list_records(tmp_path / "lab", "ring", "validation")
    labelled = [r for r in val if r.label]
    assert sorted(r.defect for r in labelled) == ["bump", "bump", "stain", "stain"]
    assert all(load_sample(r).mask.any() for r in labelled)  # masks written, and not empty
    for split in ("train", "validation", "test"):
        plain = [r for r in list_records(tmp_path / "plain", "ring", split)]
        same = [r for r in list_records(tmp_path / "lab", "ring", split) if r.label == 0 or split == "test"]
        assert len(plain) == len(same)
        for a, b in zip(plain, same, strict=True):
            assert a.rgb_path.read_bytes() == b.rgb_path.read_bytes()
            assert a.xyz_path.read_bytes() == b.xyz_path.read_bytes()


def test_a_generated_dataset_records_its_settings_and_runs_carry_them(tmp_path) -> None:
    from cmdiad.pipeline.outputs import run_metadata

    generate_dataset(tmp_path / "twins", replace(SMALL, null_twins=True, seed=4))
    settings = dataset_settings(tmp_path / "twins")
    assert settings is not None and settings["null_twins"] is True and settings["seed"] == 4
    assert settings["image_size"] == [64, 80] and settings["geometry_shading"] == 0.0
    assert run_metadata(tmp_path / "twins", seed=0, device="cpu")["synthetic"] == settings
    (tmp_path / "other").mkdir()
    assert dataset_settings(tmp_path / "other") is None  # not generated here: no synthetic key in run.json
    assert "synthetic" not in run_metadata(tmp_path / "other", seed=0, device="cpu")
