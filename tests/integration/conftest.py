"""A tiny generated dataset shared by the integration tests (one category, 64x64)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdiad.synthetic.generator import SynthConfig, generate_dataset

_TINY_SETS = [
    "--set", "data.image_size=[64,64]",
    "--set", "distill.epochs=2",
    "--set", "distill.width=8",
    "--set", "distill.trunk_width=4",
    "--set", "distill.trunk_blocks=1",
    "--set", "memory.coreset.ratio=0.5",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    cfg = SynthConfig(categories=("ring",), image_size=(64, 64), train=6, validation=3, test_good=3,
                      test_per_defect=2, seed=1)
    generate_dataset(root, cfg)
    return root


@pytest.fixture(scope="session")
def tiny_sets() -> list[str]:
    """CLI overrides that shrink the default preset for the tiny dataset."""
    return list(_TINY_SETS)
