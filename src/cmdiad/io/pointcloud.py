"""Validated readers and writers for organized point clouds (``H x W x 3`` float TIFF).

Invalid points are stored as ``(0, 0, 0)``, as in MVTec 3D-AD. Coordinates are kept in the
file's units (metres for MVTec 3D-AD and for the synthetic generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from cmdiad.errors import DatasetError


def _load_tiff(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, struct.error...)
        raise DatasetError(path, f"unreadable or truncated TIFF ({type(err).__name__}: {err})") from err


def xyz_file_size(path: Path | str, *, verify: bool = False) -> tuple[int, int]:
    """The ``(H, W)`` of an organized point cloud from its TIFF header, without reading the pixels.

    Args:
        path: TIFF file.
        verify: Also check that the file holds one ``H x W x 3`` float array and is long enough
            for every data strip the header announces (finds truncated files cheaply).

    Raises:
        DatasetError: The file is missing, not a TIFF, or (with ``verify``) malformed or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(page.shape), page.dtype
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)), default=0)
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, struct.error...)
        raise DatasetError(path, f"unreadable or truncated TIFF ({type(err).__name__}: {err})") from err
    if verify:
        if len(shape) != 3 or shape[2] != 3:
            raise DatasetError(path, f"expected an H×W×3 organized point cloud, got shape {shape}")
        if dtype is None or not np.issubdtype(dtype, np.floating):
            raise DatasetError(path, f"expected float coordinates, got dtype {dtype}")
        size = path.stat().st_size
        if end > size:
            raise DatasetError(path, f"truncated TIFF: the header announces {end} bytes, the file has {size}")
    return int(shape[0]), int(shape[1])


def read_xyz(path: Path | str, *, nan_to_zero: bool = False) -> np.ndarray:
    """Read and validate an organized point cloud.

    Args:
        path: TIFF file holding an ``(H, W, 3)`` float array.
        nan_to_zero: Turn points with a NaN/inf coordinate into invalid ``(0, 0, 0)`` points
            instead of raising (used by preprocessing only).

    Returns:
        ``(H, W, 3)`` float32.

    Raises:
        DatasetError: Unreadable file, wrong shape or dtype, non-finite values, or no valid point.
    """
    path = Path(path)
    xyz = _load_tiff(path)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(path, f"expected an H×W×3 organized point cloud, got shape {xyz.shape}")
    if not np.issubdtype(xyz.dtype, np.floating):
        raise DatasetError(path, f"expected float coordinates, got dtype {xyz.dtype}")
    # tifffile returns a fresh writable array: no second copy when it is already float32.
    xyz = xyz.astype(np.float32, copy=not (xyz.dtype == np.float32 and xyz.flags.writeable))
    if not np.isfinite(xyz).all():  # fast path first: the per-point mask costs ~20x more
        bad = ~np.isfinite(xyz).all(axis=2)
        if not nan_to_zero:
            raise DatasetError(path, f"{int(bad.sum())} points have NaN/inf coordinates")
        xyz[bad] = 0.0
    if not xyz.any():
        raise DatasetError(path, "all points are zero (empty point cloud)")
    return xyz


def write_xyz(path: Path | str, xyz: np.ndarray) -> None:
    """Write an organized point cloud as a float32 TIFF, creating parent folders.

    Args:
        path: Target file.
        xyz: ``(H, W, 3)`` coordinates.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {xyz.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, xyz.astype(np.float32), photometric="minisblack", planarconfig="contig")


def xyz_to_depth(xyz: np.ndarray) -> np.ndarray:
    """The depth (z) channel of an organized point cloud.

    Args:
        xyz: ``(H, W, 3)`` coordinates.

    Returns:
        ``(H, W)`` float32; 0 where the point is invalid.
    """
    return np.ascontiguousarray(xyz[..., 2], dtype=np.float32)
