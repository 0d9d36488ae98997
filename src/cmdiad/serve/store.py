"""Recently scored parts: a bounded, thread-safe LRU of results and their heatmap PNGs."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cmdiad.viz.heatmaps import annotate, calibrated_scale, overlay, resize_image


@dataclass
class Part:
    """One scored part: its JSON result and what its heatmap is drawn from.

    The PNG is encoded on the first ``GET`` of the heatmap (not while the client waits for its
    score) and then kept with the part.

    Attributes:
        id: Part id (heatmap URL).
        result: The JSON answer of ``POST /score``.
        background: ``(H, W, 3)`` uint8 image the map is drawn over.
        amap: ``(h, w)`` float16 anomaly map.
        scale: Fixed colour scale ``(vmin, good_level, vmax)``.
    """

    id: str
    result: dict[str, Any]
    background: np.ndarray = field(repr=False)
    amap: np.ndarray = field(repr=False)
    scale: tuple[float, float, float] = (0.0, 0.5, 1.0)
    _png: bytes | None = field(default=None, repr=False)

    @property
    def png(self) -> bytes:
        """The heatmap as PNG bytes (encoded once)."""
        if self._png is None:
            self._png = heatmap_png(self.background, self.amap.astype(np.float32), self.scale,
                                    score=self.result["score"], threshold=self.result["threshold"])
        return self._png


class PartStore:
    """The last ``capacity`` parts, oldest dropped first.

    Args:
        capacity: Parts kept (and heatmaps served); at least 1.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._parts: OrderedDict[str, Part] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, part: Part) -> None:
        """Keep ``part`` as the newest, evicting the oldest beyond capacity."""
        with self._lock:
            self._parts[part.id] = part
            self._parts.move_to_end(part.id)
            while len(self._parts) > self.capacity:
                self._parts.popitem(last=False)

    def get(self, part_id: str) -> Part | None:
        """The part ``part_id`` or None when unknown or evicted."""
        with self._lock:
            return self._parts.get(part_id)

    def latest(self) -> list[Part]:
        """Kept parts, newest first."""
        with self._lock:
            return list(reversed(self._parts.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._parts)


def colour_scale(model: Any, amap: np.ndarray) -> tuple[float, float, float]:
    """The ``(vmin, good_level, vmax)`` of a part's heatmap, fixed by the model's calibration.

    The same scale as ``cmdiad predict`` (:func:`~cmdiad.viz.heatmaps.calibrated_scale`): from the
    model's validation good-pixel quantiles when it has them, else from the part's own map.
    """
    cal = getattr(model, "map_calibration", None)
    return calibrated_scale(cal if isinstance(cal, dict) else None, amap)


def heatmap_png(background: np.ndarray, amap: np.ndarray, scale: tuple[float, float, float], *,
                score: float, threshold: float | None) -> bytes:
    """PNG bytes of ``amap`` ``(H, W)`` over ``background`` with the verdict strip and colour bar."""
    back = resize_image(background, amap.shape[:2]) if background.shape[:2] != amap.shape[:2] else background
    img = overlay(back, amap, vmin=scale[0], vmax=scale[2], good_level=scale[1])
    buf = io.BytesIO()
    Image.fromarray(annotate(img, scale=scale, score=score, threshold=threshold)).save(buf, format="PNG",
                                                                                      compress_level=1)
    return buf.getvalue()
