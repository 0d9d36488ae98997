"""Synthetic defects: where they are, how they change the height field and the albedo.

Defects live in one modality or in both:

- ``bump``, ``dent``: geometry only (the renderer keeps RGB shading defect-free unless
  ``SynthConfig.geometry_shading`` lets part of it through);
- ``stain``: appearance only (the albedo darkens and shifts hue, the surface is unchanged);
- ``crack``, ``hole``: both (a groove or pit with a dark interior).

Footprints have hard edges and height changes never vanish inside them, so the ground-truth
mask is exactly the set of pixels the defect changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GEOMETRY_ONLY = ("bump", "dent")
APPEARANCE_ONLY = ("stain",)
BOTH = ("crack", "hole")
DEFECT_TYPES = GEOMETRY_ONLY + APPEARANCE_ONLY + BOTH
"""Every defect type, in the order of their grey values (255, 254, ...)."""


@dataclass(frozen=True)
class Defect:
    """One defect on one sample.

    Attributes:
        kind: Defect type, one of ``DEFECT_TYPES``.
        footprint: ``(H, W)`` bool, where the defect is.
        delta_height: ``(H, W)`` metres added to the height field (0 outside the footprint).
        albedo_factor: ``(3,)`` multiplier of the albedo inside the footprint, or ``None``.
    """

    kind: str
    footprint: np.ndarray
    delta_height: np.ndarray
    albedo_factor: np.ndarray | None

    @property
    def changes_geometry(self) -> bool:
        """True when the xyz data changes."""
        return self.kind not in APPEARANCE_ONLY

    @property
    def shows_in_rgb(self) -> bool:
        """True when the image changes whatever the renderer's settings (albedo and, for ``BOTH``,
        shading); geometry-only defects shade only as much as ``SynthConfig.geometry_shading``."""
        return self.kind not in GEOMETRY_ONLY


def _centre(
    x: np.ndarray, y: np.ndarray, height: np.ndarray, rng: np.random.Generator
) -> tuple[float, float]:
    """A random point well inside the object (height >= half the maximum)."""
    rows, cols = np.nonzero(height >= 0.5 * height.max())
    k = rng.integers(len(rows))
    return float(x[rows[k], cols[k]]), float(y[rows[k], cols[k]])


def _blob_distance(
    x: np.ndarray, y: np.ndarray, c: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Distance to ``c`` divided by an irregular, angle-dependent radius (1 on the outline)."""
    dx, dy = x - c[0], y - c[1]
    theta = np.arctan2(dy, dx)
    lobes = rng.integers(2, 5)
    wobble = 1.0 + 0.25 * np.sin(lobes * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dx, dy) / wobble


def _polyline_distance(
    x: np.ndarray, y: np.ndarray, c: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Distance to a random three-segment polyline through ``c`` (a crack's centre line)."""
    angle = rng.uniform(0, 2 * np.pi)
    pts = [np.asarray(c)]
    for _ in range(3):
        angle += rng.uniform(-0.6, 0.6)
        pts.append(pts[-1] + rng.uniform(0.004, 0.007) * np.array([np.cos(angle), np.sin(angle)]))
    dist = np.full(x.shape, np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        ab = b - a
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]))
    return dist


def make_defect(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    height: np.ndarray,
    rng: np.random.Generator,
    *,
    pixel_pitch: float,
) -> Defect:
    """Draw a defect of ``kind`` on the object.

    Args:
        kind: One of ``DEFECT_TYPES``.
        x: ``(H, W)`` object-local metric coordinates of each pixel.
        y: ``(H, W)`` object-local metric coordinates of each pixel.
        height: ``(H, W)`` defect-free object height in metres (0 = table).
        rng: Source of the defect's position and size.
        pixel_pitch: Metres per pixel on the table, so thin defects stay at least a pixel wide.

    Returns:
        The defect; its footprint lies on the object and is never empty.
    """
    if kind not in DEFECT_TYPES:
        raise ValueError(f"unknown defect {kind!r}; expected one of {DEFECT_TYPES}")
    support = height > 0
    c = _centre(x, y, height, rng)
    if kind == "crack":
        half_width = max(rng.uniform(0.0008, 0.0014), 0.75 * pixel_pitch)
        foot = support & (_polyline_distance(x, y, c, rng) <= half_width)
        delta = np.where(foot, -rng.uniform(0.002, 0.003), 0.0)
        return Defect(kind, foot, delta, np.array([0.30, 0.28, 0.26]))
    radius = max(rng.uniform(*_RADIUS[kind]), pixel_pitch)
    d = _blob_distance(x, y, c, rng) / radius
    if kind == "stain":
        foot = support & (d < 1.0)
        tint = np.array([0.55, 0.45, 0.35]) * rng.uniform(0.9, 1.1)
        return Defect(kind, foot, np.zeros_like(height), tint)
    profile = 0.5 * (1.0 + np.cos(np.pi * np.clip(d, 0.0, 1.0)))
    if kind == "hole":
        foot = support & (d < 1.0)
        delta = np.where(foot, -rng.uniform(0.003, 0.005) * (0.6 + 0.4 * profile), 0.0)
        return Defect(kind, foot, delta, np.array([0.25, 0.22, 0.20]))
    foot = support & (profile >= 0.1)  # hard edge: the smallest change is 10% of the amplitude
    sign = 1.0 if kind == "bump" else -1.0
    delta = np.where(foot, sign * rng.uniform(0.002, 0.004) * profile, 0.0)
    return Defect(kind, foot, delta, None)


_RADIUS = {"bump": (0.004, 0.007), "dent": (0.004, 0.007), "stain": (0.005, 0.009), "hole": (0.003, 0.005)}
