"""FPFH patch features (the default point extractor; no learned weights).

Per sample, the foreground points (all coordinates non-zero and finite) are voxelised with a
voxel of ``voxel_ratio`` x the diagonal of their bounding box; each occupied voxel becomes its
points' centroid. Open3D estimates normals on the centroids (radius ``normal_radius_voxels``
voxels, 30 neighbours at most) and orients them along ``-z``, i.e. towards a camera looking
down ``+z`` as in MVTec 3D-AD's camera-frame scans (deterministic, no propagation step). The
33-d FPFH descriptor (radius ``feature_radius_voxels`` voxels, 100 neighbours at most) of each
voxel is given to every point in it, written onto the organized grid, and averaged per patch
over valid pixels only.

Computing on voxel centroids rather than on all points is ~10x faster at 224x224 and keeps
the requested radii meaningful: on the full cloud the 100-neighbour cap, not the radius, would
bound the support. Patches without points have zero features and are invalid.
"""

from __future__ import annotations

import numpy as np
import torch

from cmdiad._open3d import open3d
from cmdiad.config import PointFeatureConfig
from cmdiad.features.base import EXTRACTORS, FeatureInfo, PointCloudExtractor, to_grid
from cmdiad.preprocessing.organized import foreground_mask
from cmdiad.types import PatchFeatures

FPFH_DIM = 33
"""Channels of Open3D's FPFH descriptor (3 x 11-bin histograms)."""
NORMAL_MAX_NN = 30
FEATURE_MAX_NN = 100
CAMERA_DIRECTION = (0.0, 0.0, -1.0)
"""Normals are flipped to point along this direction (towards a camera looking down +z)."""


def voxel_centroids(points: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Group points by voxel and average each group.

    Args:
        points: ``(N, 3)`` float64.
        voxel: Voxel edge length (> 0).

    Returns:
        Centroids ``(M, 3)`` and, for every point, the row of its voxel ``(N,)``.
    """
    cell = np.floor((points - points.min(axis=0)) / voxel).astype(np.int64)
    extent = cell.max(axis=0) + 1
    key = (cell[:, 0] * extent[1] + cell[:, 1]) * extent[2] + cell[:, 2]
    _, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.stack([np.bincount(inverse, weights=points[:, a]) for a in range(3)], axis=1)
    return sums / counts[:, None], inverse


def fpfh_point_features(points: np.ndarray, cfg: PointFeatureConfig) -> np.ndarray:
    """FPFH descriptor of every point of one cloud.

    Args:
        points: ``(N, 3)`` foreground points.
        cfg: Uses ``voxel_ratio``, ``normal_radius_voxels``, ``feature_radius_voxels``.

    Returns:
        ``(N, 33)`` float32; all zeros when the cloud has no extent.
    """
    pts = np.asarray(points, dtype=np.float64)
    diag = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0))) if len(pts) else 0.0
    if diag <= 0.0:
        return np.zeros((len(pts), FPFH_DIM), dtype=np.float32)
    voxel = cfg.voxel_ratio * diag
    centroids, inverse = voxel_centroids(pts, voxel)
    o3d = open3d()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(centroids))
    normal_param = o3d.geometry.KDTreeSearchParamHybrid(cfg.normal_radius_voxels * voxel, NORMAL_MAX_NN)
    pcd.estimate_normals(normal_param)
    pcd.orient_normals_to_align_with_direction(np.array(CAMERA_DIRECTION))
    feature_param = o3d.geometry.KDTreeSearchParamHybrid(cfg.feature_radius_voxels * voxel, FEATURE_MAX_NN)
    fpfh = o3d.pipelines.registration.compute_fpfh_feature(pcd, feature_param)
    return np.asarray(fpfh.data, dtype=np.float32).T[inverse]


class FPFHExtractor(PointCloudExtractor):
    """FPFH patch features of organized point clouds.

    Args:
        cfg: Uses ``patch_stride`` and the FPFH fields.
    """

    def __init__(self, cfg: PointFeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_stride = cfg.patch_stride
        self.feature_info = [FeatureInfo("xyz", FPFH_DIM, cfg.patch_stride)]
        self.eval()


    def pixel_features(self, x: torch.Tensor) -> PatchFeatures:
        """Per-pixel FPFH ``(B, 33, H, W)`` (background 0) and the foreground ``(B, H, W)``."""
        fg = foreground_mask(x)
        out = torch.zeros(x.shape[0], FPFH_DIM, x.shape[2] * x.shape[3], dtype=torch.float32)
        for i in range(x.shape[0]):
            flat = fg[i].flatten().nonzero().squeeze(1).cpu()
            points = x[i].flatten(1)[:, flat.to(x.device)].T.detach().cpu().double().numpy()
            out[i][:, flat] = torch.from_numpy(fpfh_point_features(points, self.cfg)).T
        return PatchFeatures(out.view(x.shape[0], FPFH_DIM, x.shape[2], x.shape[3]).to(x.device), fg)

    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        """Patch features ``(B, 33, H // s, W // s)``: valid-pixel averages; validity per patch."""
        return to_grid(self.pixel_features(x), self.grid_size((x.shape[2], x.shape[3])))


@EXTRACTORS.register("fpfh")
def build_fpfh(cfg: PointFeatureConfig) -> FPFHExtractor:
    """FPFH extractor (``cfg.weights`` and ``cfg.pretrained`` do not apply)."""
    return FPFHExtractor(cfg)
