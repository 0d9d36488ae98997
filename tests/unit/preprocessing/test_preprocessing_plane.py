"""Plane removal, padding and clustering on clouds with a known table plane."""

from __future__ import annotations

import numpy as np
import pytest

from cmdiad.preprocessing.pointcloud import (
    PreprocessConfig,
    fit_background_plane,
    keep_largest_cluster,
    pad_to_square,
    preprocess_arrays,
    remove_background_plane,
    square_padding,
    valid_points,
)

PLANE = np.array([0.02, -0.01, -1.0])  # z = 0.3 + 0.02 x - 0.01 y


def table_with_box(
    rng: np.random.Generator, h: int = 90, w: int = 120
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tilted table (metres, 1 mm pixels) with a 2 cm high box; returns xyz, rgb, box mask."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (u - w / 2) * 1e-3, (v - h / 2) * 1e-3
    z = 0.3 + 0.02 * x - 0.01 * y + rng.normal(0, 1e-4, x.shape)
    box = (np.abs(u - w / 2) < 20) & (np.abs(v - h / 2) < 15)
    z[box] -= 0.02
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    xyz[rng.random((h, w)) < 0.01] = 0  # dropouts
    rgb = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
    return xyz, rgb, box


def test_plane_fit_recovers_the_table(rng: np.random.Generator) -> None:
    xyz, _, _ = table_with_box(rng)
    plane = fit_background_plane(xyz, seed=0)
    normal = PLANE / np.linalg.norm(PLANE)
    assert abs(abs(plane[:3] @ normal) - 1) < 1e-4
    assert np.array_equal(plane, fit_background_plane(xyz, seed=0))  # seeded


def test_plane_removed_object_kept_inputs_untouched(rng: np.random.Generator) -> None:
    xyz, rgb, box = table_with_box(rng)
    xyz0, rgb0 = xyz.copy(), rgb.copy()
    out_xyz, out_rgb = remove_background_plane(xyz, rgb, seed=1)
    assert np.array_equal(xyz, xyz0) and np.array_equal(rgb, rgb0)
    valid = valid_points(xyz0)
    assert np.array_equal(valid_points(out_xyz), valid & box)  # table gone, whole box kept
    assert (out_rgb[valid & ~box] == 0).all() and np.array_equal(out_rgb[box], rgb0[box])
    assert np.array_equal(out_rgb[~valid], rgb0[~valid])  # invalid points keep their colour
    assert np.array_equal(out_xyz[box], xyz0[box])


def test_thresholds_are_parameters(rng: np.random.Generator) -> None:
    xyz, rgb, box = table_with_box(rng)
    out, _ = remove_background_plane(xyz, rgb, PreprocessConfig(plane_distance=0.03))
    assert not valid_points(out).any()  # a 3 cm threshold also swallows the 2 cm box


def test_plane_removal_is_a_no_op_without_border_points(rng: np.random.Generator) -> None:
    xyz, rgb, box = table_with_box(rng)
    xyz[~box] = 0
    out_xyz, out_rgb = remove_background_plane(xyz, rgb)
    assert np.array_equal(out_xyz, xyz) and np.array_equal(out_rgb, rgb)


@pytest.mark.parametrize(
    ("shape", "rows", "cols"),
    [((120, 150), (40, 40), (25, 25)), ((101, 50), (49, 50), (75, 75)), ((199, 200), (0, 1), (0, 0))],
)
def test_square_padding(shape, rows, cols) -> None:
    assert square_padding(*shape, 100) == (rows, cols)
    arr = np.ones(shape + (3,), np.float32)
    padded = pad_to_square(arr)
    side = shape[0] + sum(rows)
    assert padded.shape == (side, side, 3) and padded.sum() == arr.sum()
    assert padded[rows[0], cols[0]].all() and not padded[: rows[0]].any()
    mask = pad_to_square(np.ones(shape, np.uint8))
    assert mask.shape == (side, side)
    square = np.ones((200, 200))
    assert np.array_equal(pad_to_square(square), square)


def test_largest_cluster_never_picks_noise(rng: np.random.Generator) -> None:
    xyz = np.zeros((40, 40, 3), np.float32)
    blob = rng.normal(0, 0.001, (100, 3)) + [0.0, 0.0, 0.3]
    far = rng.uniform(-1, 1, (400, 3)) + [0.0, 0.0, 2.0]  # isolated points: DBSCAN noise
    xyz.reshape(-1, 3)[:100] = blob
    xyz.reshape(-1, 3)[100:500] = far
    rgb = np.full((40, 40, 3), 9, np.uint8)
    out, out_rgb = keep_largest_cluster(xyz, rgb)
    kept = valid_points(out).reshape(-1)
    assert kept[:100].all() and not kept[100:].any()
    assert (out_rgb.reshape(-1, 3)[100:500] == 0).all() and (out_rgb.reshape(-1, 3)[:100] == 9).all()


def test_largest_cluster_without_any_cluster_changes_nothing(rng: np.random.Generator) -> None:
    xyz = np.zeros((10, 10, 3), np.float32)
    xyz.reshape(-1, 3)[:20] = rng.uniform(-1, 1, (20, 3)) + [0, 0, 3]
    out, _ = keep_largest_cluster(xyz, None)
    assert np.array_equal(out, xyz)


def test_full_preprocessing_is_idempotent(rng: np.random.Generator) -> None:
    xyz, rgb, box = table_with_box(rng)
    gt = (box * 255).astype(np.uint8)
    once = preprocess_arrays(xyz, rgb, gt, seed=3)
    assert once[0].shape == (200, 200, 3) and once[1].shape == (200, 200, 3)
    assert once[2].shape == (200, 200) and once[2].sum() == gt.sum()
    again = preprocess_arrays(*once, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(once, again, strict=True))
