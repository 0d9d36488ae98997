"""FPFH extractor: contract, bump sensitivity, background validity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdiad.config import PointFeatureConfig
from cmdiad.features.base import EXTRACTORS
from cmdiad.features.fpfh import FPFHExtractor, fpfh_point_features, voxel_centroids


def organized_plane(h: int, w: int, border: int, bump_at: tuple[int, int] | None = None) -> np.ndarray:
    """``(h, w, 3)`` pinhole-projected plane at z = 0.6 with a zero border and an optional bump.

    The bump is a Gaussian dent towards the camera (z decreases), sigma ``min(h, w) / 14`` pixels.
    """
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    z = np.full((h, w), 0.6)
    if bump_at is not None:
        r2 = (yy - bump_at[0]) ** 2 + (xx - bump_at[1]) ** 2
        z -= 0.015 * np.exp(-r2 / (2 * (min(h, w) / 14) ** 2))
    focal = 300.0
    xyz = np.stack([(xx - w / 2) / focal * z, (yy - h / 2) / focal * z, z], axis=-1).astype(np.float32)
    xyz[:border], xyz[-border:], xyz[:, :border], xyz[:, -border:] = 0, 0, 0, 0
    return xyz


@pytest.fixture(scope="module")
def ext() -> FPFHExtractor:
    return EXTRACTORS.get("fpfh")(PointFeatureConfig(patch_stride=8))


def test_contract_on_non_square_input(ext: FPFHExtractor) -> None:
    x = torch.stack([ext.preprocess(organized_plane(90, 70, 4, (40, 30)), (72, 104))] * 2)
    pf = ext.patch_features(x)
    assert ext.out_channels == ext.feature_info[0].num_chs == 33 and ext.feature_info[0].reduction == 8
    assert pf.features.shape == (2, 33, 72 // 8, 104 // 8) and pf.valid.shape == (2, 9, 13)
    assert pf.grid == ext.grid_size((72, 104)) and not pf.features.isnan().any()
    assert torch.equal(pf.features[0], pf.features[1])
    assert torch.equal(ext.forward(x)["xyz"], pf.features)


def test_bump_changes_only_the_patches_around_it(ext: FPFHExtractor) -> None:
    size, centre = (128, 160), (64, 96)
    flat = ext.preprocess(organized_plane(*size, border=8), size)
    bump = ext.preprocess(organized_plane(*size, border=8, bump_at=centre), size)
    pf = ext.patch_features(torch.stack([flat, bump]))
    diff = (pf.features[0] - pf.features[1]).abs().sum(0)  # (16, 20)
    py, px = centre[0] // 8, centre[1] // 8
    assert diff[py - 1 : py + 1, px - 1 : px + 1].min() > 100  # each sub-histogram sums to 200
    ys, xs = torch.meshgrid(torch.arange(16), torch.arange(20), indexing="ij")
    far = ((ys - py + 0.5) ** 2 + (xs - px + 0.5) ** 2) > 6**2  # > 48 pixels from the bump centre
    assert far.sum() > 100 and diff[far & pf.valid[0]].max() < 1e-3
    assert torch.equal(pf.valid[0], pf.valid[1])


def test_background_and_invalid_patches(ext: FPFHExtractor) -> None:
    xyz = organized_plane(64, 64, border=16)
    xyz[20, 30, 2] = np.nan  # a non-finite point is background, not a NaN feature
    x = torch.stack([ext.preprocess(xyz, (64, 64)), torch.zeros(3, 64, 64)])
    pf = ext.patch_features(x)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(pf.valid[0], expected) and not pf.valid[1].any()
    assert pf.features[0][:, ~expected].abs().sum() == 0 and pf.features[1].abs().sum() == 0
    assert torch.isfinite(pf.features).all() and pf.features[0][:, expected].abs().sum(0).min() > 0


def test_degenerate_clouds_do_not_crash() -> None:
    cfg = PointFeatureConfig()
    assert fpfh_point_features(np.zeros((0, 3)), cfg).shape == (0, 33)
    assert not fpfh_point_features(np.ones((1, 3)), cfg).any()
    two = fpfh_point_features(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]), cfg)
    assert two.shape == (2, 33) and np.isfinite(two).all()


def test_voxel_centroids_average_each_voxel() -> None:
    pts = np.array([[0.1, 0.1, 0.1], [0.3, 0.1, 0.1], [1.5, 0.2, 0.1], [0.2, 0.4, 0.1]])
    centroids, inverse = voxel_centroids(pts, 1.0)
    assert inverse[0] == inverse[1] == inverse[3] != inverse[2]
    np.testing.assert_allclose(centroids[inverse[0]], [0.2, 0.2, 0.1])
    np.testing.assert_allclose(centroids[inverse[2]], pts[2])
