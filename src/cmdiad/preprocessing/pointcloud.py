"""Background plane removal, padding to a square and largest-cluster filtering of organized clouds.

These are the steps of the MVTec 3D-AD preprocessing used by M3DM/CMDIAD (method-spec §1.2),
as pure functions that return new arrays. Thresholds are in the cloud's units; the defaults are
the reference values, in metres (MVTec 3D-AD and the synthetic generator use metres).

Unlike the reference, each step is idempotent, so running the preprocessing on its own output
changes nothing: plane removal is skipped when the border strips hold too few valid points
(already removed), padding is skipped on squares whose side is a multiple of ``pad_multiple``,
and the largest DBSCAN cluster of a single cluster is the whole cloud. DBSCAN's noise label
(-1) is never chosen as the largest cluster, and RANSAC is seeded.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from cmdiad._open3d import open3d
from cmdiad.config import PreprocessConfig

logger = logging.getLogger(__name__)


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: points whose three coordinates are all non-zero (reference convention)."""
    return (xyz != 0).all(axis=-1)


def _border_points(xyz: np.ndarray, border: int) -> np.ndarray:
    """``(N, 3)`` valid points of the top/bottom rows and left/right columns strips."""
    strip = np.zeros(xyz.shape[:2], dtype=bool)
    strip[:border], strip[-border:], strip[:, :border], strip[:, -border:] = True, True, True, True
    return xyz[strip & valid_points(xyz)].astype(np.float64)


def fit_background_plane(
    xyz: np.ndarray, cfg: PreprocessConfig | None = None, *, seed: int = 0
) -> np.ndarray | None:
    """Fit the table plane on the border strips with seeded RANSAC.

    Args:
        xyz: ``(H, W, 3)`` organized cloud.
        cfg: Thresholds; ``None`` uses the reference defaults.
        seed: Open3D's RANSAC seed.

    Returns:
        ``(4,)`` plane ``(a, b, c, d)`` with unit normal, or ``None`` when the strips hold fewer
        than ``cfg.min_border_points`` valid points.
    """
    cfg = cfg or PreprocessConfig()
    pts = _border_points(xyz, cfg.border)
    if len(pts) < cfg.min_border_points:
        return None
    o3d = open3d()
    o3d.utility.random.seed(seed)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    plane, _ = pcd.segment_plane(
        distance_threshold=cfg.ransac_distance, ransac_n=cfg.ransac_n, num_iterations=cfg.ransac_iterations
    )
    plane = np.asarray(plane, dtype=np.float64)
    return plane / np.linalg.norm(plane[:3])


def remove_background_plane(
    xyz: np.ndarray, rgb: np.ndarray | None, cfg: PreprocessConfig | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero every valid point near the border-fitted plane, in xyz and rgb.

    Args:
        xyz: ``(H, W, 3)`` organized cloud.
        rgb: ``(H, W, 3)`` image registered with ``xyz``, or ``None``.
        cfg: Thresholds; ``None`` uses the reference defaults.
        seed: RANSAC seed.

    Returns:
        New ``(xyz, rgb)``; unchanged copies when the border holds too few points.
    """
    cfg = cfg or PreprocessConfig()
    xyz, rgb = xyz.copy(), None if rgb is None else rgb.copy()
    plane = fit_background_plane(xyz, cfg, seed=seed)
    if plane is None:
        logger.debug("too few border points: background plane already removed")
        return xyz, rgb
    dist = np.abs(xyz.astype(np.float64) @ plane[:3] + plane[3])
    near = valid_points(xyz) & (dist < cfg.plane_distance)
    xyz[near] = 0
    if rgb is not None:
        rgb[near] = 0
    return xyz, rgb


def square_padding(height: int, width: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` padding to an ``S x S`` square.

    ``S`` is the larger of ``height`` and ``width`` rounded up to ``multiple``; the odd pixel
    goes to the bottom/right.
    """
    side = max(math.ceil(height / multiple), math.ceil(width / multiple)) * multiple
    top, left = (side - height) // 2, (side - width) // 2
    return (top, side - height - top), (left, side - width - left)


def pad_to_square(array: np.ndarray, multiple: int = 100) -> np.ndarray:
    """Zero-pad an ``(H, W)`` or ``(H, W, C)`` array to a square (see :func:`square_padding`)."""
    rows, cols = square_padding(array.shape[0], array.shape[1], multiple)
    return np.pad(array, (rows, cols) + ((0, 0),) * (array.ndim - 2))


def keep_largest_cluster(
    xyz: np.ndarray, rgb: np.ndarray | None, cfg: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the largest DBSCAN cluster of the valid points; zero the others in xyz and rgb.

    Noise points (label -1) are never a cluster. Without any cluster nothing changes.

    Args:
        xyz: ``(H, W, 3)`` organized cloud.
        rgb: ``(H, W, 3)`` image, or ``None``.
        cfg: ``cluster_eps`` and ``cluster_min_points``; ``None`` uses the defaults.

    Returns:
        New ``(xyz, rgb)``.
    """
    cfg = cfg or PreprocessConfig()
    xyz, rgb = xyz.copy(), None if rgb is None else rgb.copy()
    valid = valid_points(xyz)
    if not valid.any():
        return xyz, rgb
    o3d = open3d()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[valid].astype(np.float64)))
    labels = np.asarray(pcd.cluster_dbscan(eps=cfg.cluster_eps, min_points=cfg.cluster_min_points))
    if labels.max(initial=-1) < 0:
        logger.warning("DBSCAN found no cluster; cloud left unchanged")
        return xyz, rgb
    largest = np.bincount(labels[labels >= 0]).argmax()
    drop = np.zeros(valid.shape, dtype=bool)
    drop[valid] = labels != largest
    xyz[drop] = 0
    if rgb is not None:
        rgb[drop] = 0
    return xyz, rgb


def preprocess_arrays(
    xyz: np.ndarray,
    rgb: np.ndarray | None,
    mask: np.ndarray | None,
    cfg: PreprocessConfig | None = None,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Plane removal, padding to a square, largest cluster: one sample's full preprocessing.

    Args:
        xyz: ``(H, W, 3)`` organized cloud.
        rgb: ``(H, W, 3)`` uint8 image, or ``None``.
        mask: ``(H, W)`` ground truth (any dtype, padded with 0), or ``None``.
        cfg: Thresholds; ``None`` uses the reference defaults.
        seed: RANSAC seed.

    Returns:
        ``(xyz, rgb, mask)`` of size ``(S, S)``.
    """
    cfg = cfg or PreprocessConfig()
    xyz, rgb = remove_background_plane(xyz, rgb, cfg, seed=seed)
    xyz = pad_to_square(xyz, cfg.pad_multiple)
    rgb = None if rgb is None else pad_to_square(rgb, cfg.pad_multiple)
    mask = None if mask is None else pad_to_square(mask, cfg.pad_multiple)
    xyz, rgb = keep_largest_cluster(xyz, rgb, cfg)
    return xyz, rgb, mask
