"""Object categories of the synthetic dataset: height fields over the table and textures.

Every object is a height field ``h(x, y) >= 0`` (metres, towards the camera) over its local,
metric table coordinates, plus an albedo texture evaluated in the same coordinates so the
texture moves with the object. Sizes are those of small MVTec 3D-AD objects (5-10 cm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HeightFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def smooth_noise(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, scale: float, terms: int = 6
) -> np.ndarray:
    """A smooth random field in ``[-1, 1]``: a sum of random plane waves.

    Args:
        x: Metric coordinates of any shape ``(...)``.
        y: Metric coordinates, same shape.
        rng: Source of the wave directions and phases.
        scale: Typical wavelength in metres.
        terms: Number of waves.

    Returns:
        Field of the shape of ``x``, float64.
    """
    angles = rng.uniform(0.0, np.pi, terms)
    freqs = rng.uniform(0.5, 1.5, terms) * (2 * np.pi / scale)
    phases = rng.uniform(0.0, 2 * np.pi, terms)
    field = np.zeros_like(x)
    for a, f, p in zip(angles, freqs, phases, strict=True):
        field += np.sin(f * (np.cos(a) * x + np.sin(a) * y) + p)
    return field / terms * np.sqrt(2.0)


def _ring(x: np.ndarray, y: np.ndarray, aspect: float) -> np.ndarray:
    """Torus (bagel): major radius 3 cm, tube radius 1.3 cm."""
    rho = np.hypot(x, y * aspect)
    tube = 0.013**2 - (rho - 0.030) ** 2
    return np.sqrt(np.clip(tube, 0.0, None))


def _tile(x: np.ndarray, y: np.ndarray, aspect: float) -> np.ndarray:
    """Rounded box (tile): 9 x 6 cm, 1.2 cm high, 6 mm edge radius."""
    inside = np.minimum(0.045 - np.abs(x), 0.030 * aspect - np.abs(y))
    edge = np.clip(inside / 0.006, 0.0, 1.0)
    return np.where(inside > 0, 0.012 * np.sqrt(1.0 - (1.0 - edge) ** 2), 0.0)


def _dome(x: np.ndarray, y: np.ndarray, aspect: float) -> np.ndarray:
    """Ellipsoidal cap (fruit): 8 x 6.8 cm footprint, 3.5 cm high."""
    r2 = (x / 0.040) ** 2 + (y / (0.034 * aspect)) ** 2
    return 0.035 * np.sqrt(np.clip(1.0 - r2, 0.0, None))


@dataclass(frozen=True)
class Shape:
    """One object category.

    Attributes:
        height: ``(x, y, aspect) -> (H, W)`` heights in metres; ``aspect`` jitters the outline.
        color: Base albedo (r, g, b) in [0, 1].
        pattern: ``"blotch"``, ``"stripes"`` or ``"speckle"`` texture.
    """

    height: HeightFn
    color: tuple[float, float, float]
    pattern: str

    def albedo(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Texture in the object's local coordinates.

        Returns:
            ``(..., 3)`` albedo in [0.2, 0.9] (keeps shaded pixels far from 0 and 255) for
            coordinates of any shape ``(...)``.
        """
        base = np.asarray(self.color)
        if self.pattern == "stripes":
            mod = 0.12 * np.sin(2 * np.pi * x / 0.012 + rng.uniform(0, 2 * np.pi))
        elif self.pattern == "speckle":
            mod = 0.06 * smooth_noise(x, y, rng, scale=0.004, terms=8)
        else:
            mod = 0.15 * smooth_noise(x, y, rng, scale=0.03)
        mod = mod + 0.05 * smooth_noise(x, y, rng, scale=0.01)
        return np.clip(base * (1.0 + mod[..., None]), 0.2, 0.9)


SHAPES: dict[str, Shape] = {
    "ring": Shape(_ring, (0.72, 0.48, 0.25), "blotch"),
    "tile": Shape(_tile, (0.45, 0.55, 0.68), "stripes"),
    "dome": Shape(_dome, (0.85, 0.42, 0.30), "speckle"),
}
"""Available categories, by name."""

BACKGROUND_COLOR = (0.30, 0.30, 0.32)
"""Albedo of the table."""
