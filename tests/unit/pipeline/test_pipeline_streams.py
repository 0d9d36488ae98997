"""Methods are configurations over streams."""

from __future__ import annotations

import pytest

from cmdiad.config import DetectorConfig, FusionConfig
from cmdiad.errors import ConfigError
from cmdiad.pipeline.streams import ALL_ROWS, needed_modalities, parse_row, row_name, streams_for


def test_rows_round_trip() -> None:
    assert len(ALL_ROWS) == 9
    for row in ALL_ROWS:
        assert row_name(*parse_row(row)) == row
    with pytest.raises(ConfigError, match="f3f_xyz"):
        parse_row("f3f_xyz")


def test_streams_and_modalities_of_each_method() -> None:
    fusion = FusionConfig(rgb_weight=0.1, xyz_weight=1.0, hallucinated_weight=0.7)
    dual = streams_for(DetectorConfig(method="dual", main="both", fusion=fusion))
    assert [(s.name, s.weight) for s in dual] == [("xyz", 1.0), ("rgb", 0.1)]
    f2f_rgb = DetectorConfig(method="f2f", main="rgb", fusion=fusion)
    assert [(s.name, s.weight) for s in streams_for(f2f_rgb)] == [("rgb", 0.1), ("xyz_from_rgb", 0.7)]
    assert needed_modalities(f2f_rgb) == ("rgb",)
    assert needed_modalities(DetectorConfig(method="i2f", main="xyz")) == ("xyz",)
    assert needed_modalities(DetectorConfig(method="dual", main="both")) == ("rgb", "xyz")
