"""Feature extractors behind one registry, and :func:`build_extractor`.

Importing this package registers every extractor: ``efficientnet_lite{0,1,2}`` (the
default RGB backbone), ``dino_vitb8``, ``dino_vits8``, ``dinov2_vitb14``, ``fpfh`` and
``point_mae``.
"""

from __future__ import annotations

from cmdiad.config import PointFeatureConfig, RGBFeatureConfig
from cmdiad.errors import ConfigError
from cmdiad.features import fpfh, point_mae, rgb, vit  # noqa: F401 - register the extractors
from cmdiad.features.base import EXTRACTORS, FeatureExtractor, FeatureInfo, to_grid

__all__ = ["EXTRACTORS", "FeatureExtractor", "FeatureInfo", "build_extractor", "to_grid"]


def build_extractor(cfg: RGBFeatureConfig | PointFeatureConfig) -> FeatureExtractor:
    """Build the extractor registered under ``cfg.name``, called with ``cfg``.

    Raises:
        ConfigError: ``cfg.name`` is not registered (the message lists the known names).
    """
    try:
        factory = EXTRACTORS.get(cfg.name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    return factory(cfg)
