"""Strict config loading: unknown keys, wrong types and invalid values raise ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdiad.config import (
    DetectorConfig,
    ExperimentConfig,
    from_dict,
    load_file,
    merge,
    set_path,
    to_dict,
)
from cmdiad.errors import ConfigError


def test_round_trip_through_dict() -> None:
    cfg = from_dict(ExperimentConfig, {"detector": {"rgb": {"weights": "/x/w.pth"}, "data": {"image_size": [32, 48]}}})
    assert cfg.detector.rgb.weights == Path("/x/w.pth")
    assert cfg.detector.data.image_size == (32, 48)
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"detector": {"memroy": {}}}, "memroy"),
        ({"detector": {"memory": {"coreset": {"ratio": 0}}}}, "ratio"),
        ({"detector": {"distill": {"epochs": "ten"}}}, "epochs"),
        ({"detector": {"distill": {"epochs": True}}}, "epochs"),
        ({"detector": {"data": {"train_with_validation": "yes"}}}, "train_with_validation"),
        ({"detector": {"method": "f2f", "main": "both"}}, "main"),
        ({"detector": {"memory": {"knn_backend": "annoy"}}}, "annoy"),
        ({"device": 3}, "device"),
    ],
)
def test_invalid_configs_name_the_problem(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        from_dict(ExperimentConfig, data)


def test_toml_file_and_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[detector.distill]\nepochs = 3\n[detector.memory.coreset]\nratio = 0.25\n')
    data = merge({"detector": {"distill": {"lr": 0.1}}}, load_file(path))
    set_path(data, "detector.memory.knn_backend", "faiss")
    cfg = from_dict(ExperimentConfig, data)
    assert (cfg.detector.distill.epochs, cfg.detector.distill.lr) == (3, 0.1)
    assert cfg.detector.memory.coreset.ratio == 0.25 and cfg.detector.memory.knn_backend == "faiss"


def test_unreadable_config_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[[")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_file(bad)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_file(tmp_path / "missing.toml")


def test_detector_defaults_are_valid() -> None:
    assert DetectorConfig().method == "dual"
