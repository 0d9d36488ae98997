"""Validated readers and writers for RGB images and ground-truth masks (PNG).

Every reading problem raises :class:`~cmdiad.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from cmdiad.errors import DatasetError

logger = logging.getLogger(__name__)

_GREY_MODES = ("L", "P", "1")


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image, turning every failure into a ``DatasetError``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with Image.open(path) as img:
            img.load()  # decoded pixels stay valid after the file is closed: no copy needed
            return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"unreadable or truncated image ({err})") from err


def read_rgb(path: Path | str) -> np.ndarray:
    """Read an 8-bit RGB image.

    Grey and palette images are converted to three channels with a warning; images with any
    other number of channels (e.g. RGBA) are rejected.

    Args:
        path: PNG (or any PIL-readable) file.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    img = _open(Path(path))
    if img.mode in _GREY_MODES:
        logger.warning("%s: %s image converted to RGB", path, img.mode)
        img = img.convert("RGB")
    bands = len(img.getbands())
    if bands != 3:
        raise DatasetError(path, f"expected 3 channels, got {bands} (mode {img.mode})")
    if img.mode != "RGB":
        raise DatasetError(path, f"expected an 8-bit RGB image, got mode {img.mode}")
    return np.array(img, dtype=np.uint8)  # one writable copy


def rgb_file_size(path: Path | str, *, verify: bool = False) -> tuple[int, int]:
    """The ``(H, W)`` of an image from its header, without decoding the pixels.

    Args:
        path: Image file.
        verify: Also check the file's structure and checksums (PIL ``verify``: reads the
            file but decodes nothing), which finds truncated and corrupted PNGs cheaply.

    Raises:
        DatasetError: The file is missing, not an image, or (with ``verify``) damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if verify:
                img.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"unreadable or truncated image ({err})") from err
    return int(height), int(width)


def read_mask(path: Path | str) -> np.ndarray:
    """Read a single-channel ground-truth mask; any non-zero grey value is anomalous.

    Args:
        path: PNG file with one channel.

    Returns:
        ``(H, W)`` bool.
    """
    return read_mask_values(path) > 0


def read_mask_values(path: Path | str) -> np.ndarray:
    """Read a single-channel mask keeping its grey values (defect class ids).

    Args:
        path: PNG file with one channel.

    Returns:
        ``(H, W)`` integer array (uint8 for 8-bit masks).
    """
    img = _open(Path(path))
    bands = len(img.getbands())
    if bands != 1:
        raise DatasetError(path, f"expected a single-channel mask, got {bands} channels (mode {img.mode})")
    if img.mode == "P":
        img = img.convert("L")
    return np.asarray(img).copy()


def write_rgb(path: Path | str, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, creating parent folders.

    Args:
        path: Target file.
        rgb: ``(H, W, 3)`` uint8.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Write a mask as an 8-bit grey PNG, creating parent folders.

    Args:
        path: Target file.
        mask: ``(H, W)`` bool (written as 0/255) or uint8 grey values (written as is).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        raise ValueError(f"mask must be bool or uint8, got {mask.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
