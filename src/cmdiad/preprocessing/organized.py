"""Organized point clouds on the model grid: nearest resize and the foreground mask.

An organized cloud stores one 3D point per pixel; invalid pixels are ``(0, 0, 0)``. Resizing
must never blend a valid point with an invalid one (that would invent points between the
object and the origin), so only nearest-neighbour sampling is used, exactly as
``F.interpolate(mode="nearest")`` in the reference code (method-spec §1.3).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def resize_organized(xyz: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of one organized point cloud.

    Args:
        xyz: ``(H0, W0, 3)`` organized cloud (numpy or tensor), invalid points are 0.
        size: Target ``(H, W)``.

    Returns:
        ``(3, H, W)`` float32 tensor; every output point is a copy of one input point.
    """
    t = torch.as_tensor(np.asarray(xyz) if isinstance(xyz, np.ndarray) else xyz)
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"expected an organized cloud (H, W, 3), got shape {tuple(t.shape)}")
    chw = t.to(torch.float32).permute(2, 0, 1).unsqueeze(0)
    if tuple(chw.shape[-2:]) == tuple(size):
        return chw[0].contiguous()
    return F.interpolate(chw, size=tuple(size), mode="nearest")[0].contiguous()


def foreground_mask(xyz: torch.Tensor) -> torch.Tensor:
    """Pixels holding a valid 3D point: all three coordinates non-zero and finite.

    Args:
        xyz: ``(B, 3, H, W)`` organized clouds.

    Returns:
        ``(B, H, W)`` bool.
    """
    if xyz.ndim != 4 or xyz.shape[1] != 3:
        raise ValueError(f"expected organized clouds (B, 3, H, W), got shape {tuple(xyz.shape)}")
    return ((xyz != 0) & torch.isfinite(xyz)).all(dim=1)
