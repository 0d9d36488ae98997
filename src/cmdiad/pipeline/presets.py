"""Named presets: partial config dicts merged under the user's file and ``--set`` overrides."""

from __future__ import annotations

from typing import Any

from cmdiad.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # Offline, CPU-sized: shipped EfficientNet-Lite0 weights + FPFH, short distillation.
    "default": {
        "detector": {
            "data": {"image_size": [224, 224]},
            "rgb": {"name": "efficientnet_lite0"},
            "xyz": {"name": "fpfh", "patch_stride": 8},
            "memory": {"coreset": {"ratio": 0.1}},
            # Normalised sum calibrated on held-out good samples: the OCSVM weights each stream
            # roughly by its typical score, so a noisy hallucinated stream dominates (docs/method.md).
            "fusion": {"kind": "sum", "fit_on": "validation"},
            "distill": {"epochs": 20, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 2, "width": 8,
                        "trunk_width": 16, "trunk_blocks": 3},
        }
    },
    # The paper's configuration (method-spec §2-§4): DINO ViT-B/8 + Point-MAE, user weights.
    "paper": {
        "detector": {
            "data": {"image_size": [224, 224]},
            "rgb": {"name": "dino_vitb8"},
            "xyz": {"name": "point_mae", "patch_stride": 4, "num_groups": 1024, "group_size": 128},
            "memory": {"coreset": {"ratio": 0.1}, "standardize": "m3dm"},
            "fusion": {"kind": "ocsvm", "fit_on": "train"},
            "distill": {"epochs": 100, "batch_size": 32, "lr": 5e-4, "warmup_epochs": 10, "width": 96,
                        "decoder_resolution": 1.0, "f2f_parity": True,
                        "trunk_width": 64, "trunk_blocks": 12},
        }
    },
}


def preset(name: str) -> dict[str, Any]:
    """The override dict of preset ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
