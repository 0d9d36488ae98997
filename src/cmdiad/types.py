"""Typed records passed between cmdiad components.

Modalities are spelled ``"rgb"`` and ``"xyz"`` everywhere. Arrays read from disk are numpy
(``Sample``); tensors fed to models are torch (``PatchFeatures``, ``Scores``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Modality = Literal["rgb", "xyz"]
MODALITIES: tuple[Modality, ...] = ("rgb", "xyz")


@dataclass(frozen=True)
class SampleRecord:
    """Where one sample lives on disk. Missing modalities have a ``None`` path.

    Attributes:
        category: Category folder name, e.g. ``"bagel"``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        defect: Defect folder name; ``"good"`` for normal samples.
        stem: File stem shared by the rgb/xyz/gt files, e.g. ``"000"``.
        rgb_path: PNG image, or ``None`` when the sample has no RGB.
        xyz_path: Organized point cloud TIFF, or ``None`` when the sample has no 3D scan.
        gt_path: Ground-truth mask PNG, or ``None`` (good samples may lack one).
    """

    category: str
    split: str
    defect: str
    stem: str
    rgb_path: Path | None = None
    xyz_path: Path | None = None
    gt_path: Path | None = None

    @property
    def label(self) -> int:
        """1 for a defective sample, 0 for a good one."""
        return int(self.defect != "good")

    @property
    def modalities(self) -> frozenset[str]:
        """The modalities this sample has on disk."""
        present = {"rgb": self.rgb_path, "xyz": self.xyz_path}
        return frozenset(m for m, p in present.items() if p is not None)

    @property
    def key(self) -> str:
        """A stable identifier, ``category/split/defect/stem``."""
        return f"{self.category}/{self.split}/{self.defect}/{self.stem}"

    def path_of(self, modality: str) -> Path | None:
        """The file of ``modality`` (``"rgb"`` or ``"xyz"``), or ``None``."""
        return {"rgb": self.rgb_path, "xyz": self.xyz_path}[modality]


@dataclass
class Sample:
    """One sample's arrays at native resolution.

    Attributes:
        record: Where it came from.
        rgb: ``(H, W, 3)`` uint8, or ``None``.
        xyz: ``(H, W, 3)`` float32 organized point cloud, invalid points are 0, or ``None``.
        mask: ``(H, W)`` bool ground truth; all False for good samples without a mask file.
    """

    record: SampleRecord
    rgb: np.ndarray | None = None
    xyz: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class PatchFeatures:
    """Patch features on a grid.

    Attributes:
        features: ``(B, C, h, w)`` float32.
        valid: ``(B, h, w)`` bool; False where a patch saw no valid input (e.g. no 3D points).
    """

    features: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self) -> None:
        f, v = self.features, self.valid
        if f.ndim != 4 or v.shape != (f.shape[0], f.shape[2], f.shape[3]):
            raise ValueError(f"features {tuple(f.shape)} and valid {tuple(v.shape)} disagree")

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(h, w)``."""
        return int(self.features.shape[2]), int(self.features.shape[3])

    def to(self, device: torch.device | str) -> PatchFeatures:
        """A copy on ``device``."""
        return PatchFeatures(self.features.to(device), self.valid.to(device))


@dataclass
class Scores:
    """Anomaly scores for ``B`` samples.

    Attributes:
        image_score: ``(B,)`` higher = more anomalous.
        anomaly_map: ``(B, H, W)`` pixel scores at the ground-truth size.
        per_modality: Per-stream ``(image_score (B,), anomaly_map (B, H, W))`` before fusion.
    """

    image_score: torch.Tensor
    anomaly_map: torch.Tensor
    per_modality: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
