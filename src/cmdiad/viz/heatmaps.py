"""Anomaly-map overlays, ground-truth outlines and shaded renders of organized point clouds.

Everything works on numpy arrays; matplotlib is used only for its colormap tables (no pyplot).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

_LIGHT = np.array([-0.3, -0.4, 1.0]) / np.linalg.norm([-0.3, -0.4, 1.0])


@lru_cache(maxsize=8)
def colormap_table(name: str = "jet", levels: int = 256) -> np.ndarray:
    """The ``(levels, 3)`` uint8 RGB table of a matplotlib colormap."""
    from matplotlib import colormaps

    table = colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3]
    return np.round(table * 255).astype(np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map.

    Args:
        values: ``(h, w)`` map.
        size: Target ``(H, W)``.

    Returns:
        ``(H, W)`` float32.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape == tuple(size):
        return values
    resized = Image.fromarray(values).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3)`` or ``(H, W)`` uint8 image to ``size = (H', W')`` (bilinear)."""
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``(H, W)`` bool mask to ``size = (H', W')``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == tuple(size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 0


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")


def overlay(
    rgb: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        anomaly_map: ``(h, w)`` float map; resized bilinearly to ``(H, W)`` when it differs.
        vmin: Map value drawn with the coldest colour (and everything below it).
        vmax: Map value drawn with the hottest colour (and everything above it).
        alpha: Weight of the colour map, in [0, 1].
        cmap: Matplotlib colormap name.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    _check_rgb(rgb)
    if anomaly_map.ndim != 2:
        raise ValueError(f"expected an (H, W) anomaly map, got {anomaly_map.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    values = resize_map(anomaly_map, rgb.shape[:2])
    values = np.nan_to_num(values, nan=vmin, posinf=vmax, neginf=vmin)
    span = vmax - vmin
    unit = np.clip((values - vmin) / span, 0.0, 1.0) if span > 0 else np.zeros_like(values)
    table = colormap_table(cmap)
    colour = table[np.round(unit * (len(table) - 1)).astype(np.int64)].astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """The one-pixel inner outline of a ``(H, W)`` bool mask (8-connected erosion).

    Regions touching the image border are outlined along the border too.
    """
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    return mask & ~inner


def draw_contour(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A copy of the ``(H, W, 3)`` uint8 ``img`` with the outline of ``mask`` painted in ``colour``.

    ``mask`` is resized (nearest) to the image when sizes differ.
    """
    _check_rgb(img)
    outline = mask_contour(resize_mask(mask, img.shape[:2]))
    out = img.copy()
    out[outline] = colour
    return out


def _fill_invalid(xyz: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy of ``xyz`` with each invalid point replaced by its nearest valid one."""
    _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return xyz[rows, cols]


def depth_render(xyz: np.ndarray) -> np.ndarray:
    """A grey shaded render of an organized point cloud, seen along +z.

    Brightness = nearness (min-max over valid points) times Lambert shading from surface normals
    estimated on the pixel grid. Invalid points (all zero or non-finite) are black.

    Args:
        xyz: ``(H, W, 3)`` organized point cloud.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) point cloud, got {xyz.shape}")
    xyz = np.asarray(xyz, dtype=np.float64)
    valid = np.isfinite(xyz).all(axis=2) & np.any(xyz != 0, axis=2)
    out = np.zeros(xyz.shape, dtype=np.uint8)
    if not valid.any():
        return out
    filled = _fill_invalid(np.where(valid[..., None], xyz, 0.0), valid)
    z = filled[..., 2]
    z_valid = z[valid]
    span = float(z_valid.max() - z_valid.min())
    nearness = (z_valid.max() - z) / span if span > 0 else np.ones_like(z)
    brightness = (0.35 + 0.65 * nearness) * _lambert(filled)
    grey = np.clip(np.round(255 * brightness), 0, 255).astype(np.uint8)
    out[valid] = grey[valid][:, None]
    return out


def _lambert(xyz: np.ndarray) -> np.ndarray:
    """``(H, W)`` shading in [0.25, 1] from normals of an organized ``(H, W, 3)`` cloud."""
    if min(xyz.shape[:2]) < 2:
        return np.ones(xyz.shape[:2])
    d_row = np.gradient(xyz, axis=0)
    d_col = np.gradient(xyz, axis=1)
    normal = np.cross(d_col, d_row)
    length = np.linalg.norm(normal, axis=2, keepdims=True)
    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
    # abs: the grid's winding decides the normal's sign, which carries no meaning here.
    shade = np.abs(normal @ _LIGHT)
    return np.where(length[..., 0] > 0, 0.25 + 0.75 * shade, 1.0)


def save_png(path: Path | str, img: np.ndarray) -> None:
    """Save an ``(H, W, 3)`` or ``(H, W)`` uint8 image as PNG, creating parent folders."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W[, 3]) image, got {img.shape} {img.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")
