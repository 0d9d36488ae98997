"""Regenerate ``bank_scores.npz``: per-stream scores of tiny fixed memory banks.

Run from the repository root after an *intended* change of scoring, and say why in the commit::

    PYTHONPATH=src python tests/golden/make_golden.py

Each case builds a MemoryBank with a fixed config on seeded random "training" features, scores
seeded queries (some patches shifted to be anomalous) and turns the patch scores into anomaly maps
with :func:`cmdiad.scoring.patch.anomaly_map`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cmdiad.config import CoresetConfig, MemoryConfig
from cmdiad.memory.bank import MemoryBank
from cmdiad.scoring.patch import anomaly_map
from cmdiad.types import PatchFeatures

GOLDEN = Path(__file__).with_name("bank_scores.npz")
GRID = (6, 6)
IMAGE_SIZE = (24, 24)
CASES = {
    # name: (channels, memory config, blur sigma)
    "greedy16": (16, MemoryConfig(coreset=CoresetConfig(ratio=0.5, sampler="greedy", seed=1), blur_sigma=2.0), 2.0),
    "approx8": (8, MemoryConfig(coreset=CoresetConfig(ratio=0.3, sampler="approximate_greedy", seed=2)), 1.5),
}


def _features(rng: np.random.Generator, n: int, channels: int, anomalous: bool) -> PatchFeatures:
    x = rng.normal(size=(n, channels, *GRID)).astype(np.float32)
    if anomalous:
        x[1:, :, 1:3, 2:5] += 3.0  # a block of unusual patches in every query but the first
    return PatchFeatures(torch.from_numpy(x), torch.ones(n, *GRID, dtype=torch.bool))


def compute() -> dict[str, np.ndarray]:
    """``{<case>_image_score: (3,), <case>_patch_scores: (3, 6, 6), <case>_anomaly_map: (3, 24, 24)}``."""
    out = {}
    for seed, (name, (channels, cfg, sigma)) in enumerate(CASES.items()):
        rng = np.random.default_rng(100 + seed)
        bank = MemoryBank(cfg)
        bank.add(_features(rng, 6, channels, anomalous=False))
        bank.finalize()
        image, patch = bank.score(_features(rng, 3, channels, anomalous=True))
        out[f"{name}_image_score"] = image.numpy()
        out[f"{name}_patch_scores"] = patch.numpy()
        out[f"{name}_anomaly_map"] = anomaly_map(patch, IMAGE_SIZE, sigma=sigma, mode="float").numpy()
    return out


if __name__ == "__main__":
    np.savez_compressed(GOLDEN, **compute())
    print(f"wrote {GOLDEN}")
