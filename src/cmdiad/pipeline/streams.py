"""Streams: how a method is a configuration over shared parts.

A detector scores a sample with one memory bank per stream and fuses the stream scores. A
stream reads one modality from disk (``source``) and banks features of one modality
(``target``); it is *hallucinated* when the two differ (MTFI, method-spec §4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmdiad.config import DetectorConfig
from cmdiad.rows import ALL_ROWS, parse_row, row_name

OTHER = {"rgb": "xyz", "xyz": "rgb"}


@dataclass(frozen=True)
class Stream:
    """One scored stream of a detector.

    Attributes:
        source: Modality read from disk and encoded.
        target: Modality whose features the stream's bank holds.
        weight: Multiplier of the stream's image score and map before fusion.
    """

    source: str
    target: str
    weight: float

    @property
    def hallucinated(self) -> bool:
        """True when the features are predicted from the other modality."""
        return self.source != self.target

    @property
    def name(self) -> str:
        """``rgb``, ``xyz``, ``rgb_from_xyz`` or ``xyz_from_rgb``."""
        return self.target if not self.hallucinated else f"{self.target}_from_{self.source}"


def streams_for(cfg: DetectorConfig) -> list[Stream]:
    """The streams of the method ``cfg.method`` with main modality ``cfg.main``."""
    w = {"rgb": cfg.fusion.rgb_weight, "xyz": cfg.fusion.xyz_weight}
    if cfg.method in ("rgb", "xyz"):
        return [Stream(cfg.method, cfg.method, w[cfg.method])]
    if cfg.method == "dual":
        return [Stream("xyz", "xyz", w["xyz"]), Stream("rgb", "rgb", w["rgb"])]
    main = cfg.main
    return [Stream(main, main, w[main]), Stream(main, OTHER[main], cfg.fusion.hallucinated_weight)]


def needed_modalities(cfg: DetectorConfig) -> tuple[str, ...]:
    """Modalities read from disk at inference, in a fixed order."""
    return tuple(sorted({s.source for s in streams_for(cfg)}))


__all__ = ["ALL_ROWS", "OTHER", "Stream", "needed_modalities", "parse_row", "row_name", "streams_for"]
