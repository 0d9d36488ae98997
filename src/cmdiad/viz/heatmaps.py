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
    good_level: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        anomaly_map: ``(h, w)`` float map; resized bilinearly to ``(H, W)`` when it differs.
        vmin: Map value drawn with the coldest colour (and everything below it).
        vmax: Map value drawn with the hottest colour (and everything above it).
        alpha: Weight of the colour map, in [0, 1].
        cmap: Matplotlib colormap name.
        good_level: When given, pixels at or below it (normal ones) keep the image untouched
            and the colour fades in just above it, so the overlay never hides a good part.

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
    weight = np.full(values.shape + (1,), alpha, dtype=np.float32)
    if good_level is not None:
        ramp = max(0.1 * (vmax - good_level), 1e-12)  # fade in over the first tenth above the good level
        weight = alpha * np.clip((values - good_level) / ramp, 0.0, 1.0)[..., None]
    blended = (1.0 - weight) * rgb.astype(np.float32) + weight * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def calibrated_scale(calibration: dict[str, float] | None, anomaly_map: np.ndarray) -> tuple[float, float, float]:
    """The ``(vmin, good_level, vmax)`` colour scale of a model's heatmaps.

    From the model's calibration (good-pixel quantiles of its validation maps): ``vmin`` is the
    median good pixel, ``good_level`` the 99.9 % good pixel, and ``vmax`` lies as far above
    ``good_level`` as ``vmin`` lies below it. The scale is the same for every part, whether
    scored alone or in a batch. Without a calibration (older models) the part's own map sets it.
    """
    if calibration is not None:
        low, good = float(calibration["good_p50"]), float(calibration["good_p999"])
        if good > low:
            return low, good, good + (good - low)
    top = float(np.nanmax(anomaly_map)) if anomaly_map.size else 1.0
    return 0.0, 0.5 * top, top if top > 0 else 1.0


def annotate(
    img: np.ndarray,
    *,
    scale: tuple[float, float, float],
    score: float,
    threshold: float | None,
    cmap: str = "jet",
    min_height: int = 256,
) -> np.ndarray:
    """An ``(H', W', 3)`` uint8 copy of a heatmap with a strip below: verdict, score, threshold, colour bar.

    Args:
        img: ``(H, W, 3)`` uint8 heatmap; enlarged so that its height is at least ``min_height``.
        scale: ``(vmin, good_level, vmax)`` of the colour map (:func:`calibrated_scale`).
        score: The part's image score.
        threshold: The model's image threshold; None draws no verdict.
        cmap: Matplotlib colormap name of the overlay.
        min_height: Smallest height of the image part, so the text stays legible.
    """
    from PIL import ImageDraw, ImageFont

    _check_rgb(img)
    factor = max(1, int(np.ceil(min_height / img.shape[0])))
    big = Image.fromarray(img).resize((img.shape[1] * factor, img.shape[0] * factor), Image.Resampling.NEAREST)
    width = max(big.width, 240)
    canvas = Image.new("RGB", (width, big.height + 64), (255, 255, 255))
    canvas.paste(big, ((width - big.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    top = big.height + 4
    if threshold is not None:
        fail = score > threshold
        draw.rectangle((4, top, 48, top + 17), fill=(200, 30, 30) if fail else (30, 140, 60))
        draw.text((8, top + 1), "FAIL" if fail else "PASS", fill=(255, 255, 255), font=font)
        draw.text((54, top + 1), f"score {score:.4g} / threshold {threshold:.4g}", fill=(0, 0, 0), font=font)
    else:
        draw.text((4, top + 1), f"score {score:.4g} (no threshold)", fill=(0, 0, 0), font=font)
    _colour_bar(draw, canvas.width, top + 22, scale, colormap_table(cmap), font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _colour_bar(draw, width: int, top: int, scale: tuple[float, float, float], table: np.ndarray, font) -> None:
    """A horizontal colour bar from ``vmin`` to ``vmax`` with the good level marked."""
    vmin, good, vmax = scale
    left, right = 4, width - 4
    for x in range(left, right):
        c = table[round((x - left) / max(right - left - 1, 1) * (len(table) - 1))]
        draw.line((x, top, x, top + 10), fill=tuple(int(v) for v in c))
    gx = left + round((good - vmin) / max(vmax - vmin, 1e-12) * (right - left - 1))
    draw.line((gx, top - 2, gx, top + 12), fill=(0, 0, 0), width=2)
    draw.text((left, top + 13), f"{vmin:.3g}", fill=(0, 0, 0), font=font)
    draw.text((max(gx - 20, left + 40), top + 13), f"good {good:.3g}", fill=(0, 0, 0), font=font)
    label = f"{vmax:.3g}"
    draw.text((right - draw.textlength(label, font=font), top + 13), label, fill=(0, 0, 0), font=font)


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
