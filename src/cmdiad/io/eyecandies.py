"""Convert the original Eyecandies release to the MVTec-3D-like layout (method-spec §1.4).

Source: ``<cat>/train/data`` and ``<cat>/test_public/data`` with, per sample ``<id>``,
``<id>_depth.png`` (16 bit), ``<id>_info_depth.yaml`` (``normalization: {min, max}`` in metres),
``<id>_pose.txt`` (4 x 4), ``<id>_image_4.png`` and ``<id>_mask.png``. Output:
``<cat>/{train/good, test/good, test/bad}/{rgb, xyz, gt}`` (no validation split).

Geometry, as in the reference conversion: depth ``v / 65535 * (max - min) + min``; pinhole
back-projection (focal 711.11 px, principal point ``(W/2, H/2)``) through the inverse of
``intrinsics @ pose``; the cloud is rotated about x so that the line between the top-middle
and bottom-middle points has no y component; points with rotated ``y > -0.02``, ``z > 1.8``
or ``|x| > 1`` are background; the cloud is rotated back, its axes permuted to ``(x, z, y)``
and scaled by ``(0.1, -0.1, 0.1)``.

Deliberate fix (method-spec §8 item 18): the reference sets background points to a constant
in the rotated frame, which maps back to one *non-zero* point that survives the foreground
filter. Here background points are exactly ``(0, 0, 0)`` in the final frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.io.image import read_rgb, write_mask, write_rgb
from cmdiad.io.pointcloud import write_xyz

logger = logging.getLogger(__name__)

FOCAL = 711.11
"""Focal length of the Eyecandies renders, pixels."""
_SPLITS = {"train": "train/data", "test": "test_public/data"}


def read_simple_yaml(path: Path) -> dict:
    """Read the small nested ``key: value`` YAML files of Eyecandies (no lists, no flow style).

    Returns:
        Nested dicts; numeric values as float, others as str.
    """
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise DatasetError(path, f"unsupported YAML line {raw!r}")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key.strip()] = _scalar(value.strip())
        else:
            parent[key.strip()] = child = {}
            stack.append((indent, child))
    return root


def _scalar(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip("'\"")


def read_depth(depth_png: Path, info_yaml: Path) -> np.ndarray:
    """Metric depth from the 16-bit PNG and its normalisation range.

    Returns:
        ``(H, W)`` float64 depth in metres.
    """
    try:
        with Image.open(depth_png) as img:
            raw = np.asarray(img).astype(np.float64)
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(depth_png, f"unreadable depth image ({err})") from err
    if raw.ndim != 2:
        raise DatasetError(depth_png, f"expected a single-channel depth image, got shape {raw.shape}")
    try:
        norm = read_simple_yaml(info_yaml)["normalization"]
        lo, hi = float(norm["min"]), float(norm["max"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(info_yaml, f"no normalization min/max ({err})") from err
    return raw / 65535.0 * (hi - lo) + lo


def backproject(depth: np.ndarray, pose: np.ndarray, focal: float = FOCAL) -> np.ndarray:
    """Pinhole back-projection of a depth map through ``inverse(intrinsics @ pose)``.

    Args:
        depth: ``(H, W)`` metres, > 0.
        pose: ``(4, 4)`` camera pose of the render.
        focal: Focal length in pixels; the principal point is ``(W/2, H/2)``.

    Returns:
        ``(H, W, 3)`` points in the pose's world frame.
    """
    h, w = depth.shape
    intrinsics = np.array([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    inverse = np.linalg.inv(intrinsics @ pose)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pixels = np.stack([u, v, np.ones_like(u), 1.0 / depth], axis=-1)
    return (pixels @ inverse.T)[..., :3] * depth[..., None]


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def to_mvtec_frame(points: np.ndarray) -> np.ndarray:
    """Remove the background and map world points to the output frame.

    Args:
        points: ``(H, W, 3)`` back-projected points.

    Returns:
        ``(H, W, 3)`` float32; background points are exactly 0.
    """
    h, w, _ = points.shape
    line = points[h - 1, w // 2] - points[0, w // 2]
    angle = np.arctan2(line[1], line[2])  # the rotated line has no y component ...
    angle = (angle + np.pi / 2) % np.pi - np.pi / 2  # ... with the smaller of the two rotations
    rot = _rotation_x(angle)
    rotated = points @ rot.T
    x, y, z = rotated[..., 0], rotated[..., 1], rotated[..., 2]
    background = (y > -0.02) | (z > 1.8) | (np.abs(x) > 1.0) | ~np.isfinite(rotated).all(axis=-1)
    back = rotated @ rot  # inverse rotation
    out = back[..., [0, 2, 1]] * np.array([0.1, -0.1, 0.1])
    out[background] = 0.0
    return out.astype(np.float32)


def _read_pose(path: Path) -> np.ndarray:
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise DatasetError(path, f"unreadable pose ({err})") from err
    if pose.shape != (4, 4):
        raise DatasetError(path, f"expected a 4x4 pose matrix, got shape {pose.shape}")
    return pose


def _read_any_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(path, f"unreadable mask ({err})") from err
    return arr.any(axis=-1) if arr.ndim == 3 else arr > 0


def convert_sample(data_dir: Path, sample_id: str, folder: Path, *, test: bool) -> str:
    """Convert one sample into ``folder/<good|bad>/{rgb,xyz,gt}``; returns the defect folder."""
    stem = data_dir / sample_id
    depth = read_depth(Path(f"{stem}_depth.png"), Path(f"{stem}_info_depth.yaml"))
    xyz = to_mvtec_frame(backproject(depth, _read_pose(Path(f"{stem}_pose.txt"))))
    rgb = read_rgb(Path(f"{stem}_image_4.png"))
    mask = _read_any_mask(Path(f"{stem}_mask.png")) if test else None
    defect = "bad" if mask is not None and mask.any() else "good"
    write_xyz(folder / defect / "xyz" / f"{sample_id}.tiff", xyz)
    write_rgb(folder / defect / "rgb" / f"{sample_id}.png", rgb)
    if mask is not None:
        write_mask(folder / defect / "gt" / f"{sample_id}.png", mask)
    return defect


def _categories(src: Path, wanted: Iterable[str] | None) -> list[str]:
    if not src.is_dir():
        raise DatasetError(src, "Eyecandies root is not a folder")
    found = [p.name for p in sorted(src.iterdir()) if any((p / s).is_dir() for s in _SPLITS.values())]
    if not found:
        raise DatasetError(src, "no Eyecandies category (with train/data or test_public/data) found")
    if wanted is None:
        return found
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DatasetError(src, f"categories not found: {missing}")
    return [c for c in found if c in set(wanted)]


def convert_eyecandies(
    src: Path | str,
    out: Path | str,
    *,
    categories: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Convert an Eyecandies release at ``src`` into an MVTec-like tree at ``out``.

    Args:
        src: Root holding ``<cat>/train/data`` and ``<cat>/test_public/data``.
        out: New dataset root (``src`` is never modified).
        categories: Category names to convert; ``None`` converts all.
        progress: Called as ``progress(done, total)`` after each sample.

    Returns:
        Per category, the number of samples per ``split/defect``.
    """
    src, out = Path(src), Path(out)
    jobs = []
    for cat in _categories(src, categories):
        for split, sub in _SPLITS.items():
            data = src / cat / sub
            ids = (
                sorted(p.name[: -len("_depth.png")] for p in data.glob("*_depth.png"))
                if data.is_dir()
                else []
            )
            jobs += [(cat, split, data, i) for i in ids]
    counts: dict[str, dict[str, int]] = {}
    for done, (cat, split, data, sample_id) in enumerate(jobs, start=1):
        defect = convert_sample(data, sample_id, out / cat / split, test=split == "test")
        key = f"{split}/{defect}"
        counts.setdefault(cat, {})[key] = counts.get(cat, {}).get(key, 0) + 1
        if progress is not None:
            progress(done, len(jobs))
    logger.info("converted %d Eyecandies samples to %s", len(jobs), out)
    return counts
