"""The distiller contract: registry, base class, the sides of a direction, output scaling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from cmdiad.config import DistillConfig
from cmdiad.registry import Registry

DISTILLERS: Registry[Distiller] = Registry("distiller")
"""Distiller classes by :func:`registry_name` (``f2f``, ``reference_f2i``, ...); called with ``init_kwargs``."""

TargetBatches = Iterable[tuple[torch.Tensor, "torch.Tensor | None"]]


def registry_name(kind: str, architecture: str = "cmdiad") -> str:
    """Registry key of design ``kind`` in ``architecture`` (cmdiad's keep the bare kind)."""
    return kind if architecture == "cmdiad" else f"{architecture}_{kind}"


@dataclass(frozen=True)
class DistillSides:
    """Both sides of one distillation direction, as :func:`build_distiller` describes them.

    Attributes:
        main_modality: ``rgb`` or ``xyz`` (present at inference).
        target_modality: ``rgb`` or ``xyz`` (hallucinated).
        main_channels: Channels of the main patch features.
        target_channels: Channels of the target patch features.
        feature_grid: Grid ``(h, w)`` of the distiller's feature side (see :func:`feature_grid`).
        main_image_size: Main modality's input ``(H, W)``.
        target_image_size: Target modality's input ``(H, W)``.
    """

    main_modality: str
    target_modality: str
    main_channels: int
    target_channels: int
    feature_grid: tuple[int, int]
    main_image_size: tuple[int, int]
    target_image_size: tuple[int, int]


class Distiller(nn.Module):
    """Base class: a cross-modal network with JSON-friendly constructor arguments.

    Subclasses set ``kind``, ``architecture`` and ``init_kwargs``, and build themselves from
    :class:`DistillSides` in :meth:`build`; :meth:`calibrate` is called by the training loop
    with the training targets before the first step. ``loss`` names the training loss.
    """

    kind: str = ""
    architecture: str = "cmdiad"
    loss: str = "patch_l2"
    feature_side: str = "main"
    """Whose patch grid the feature side is on under ``distill.grid = main``: ``main`` or ``target``."""
    lr_fields: dict[str, str] | None = None
    """Per main modality, the DistillConfig field with this design's own learning rate (None: ``lr``)."""
    init_kwargs: dict

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> Distiller:
        """The network for ``sides`` with the widths of ``cfg``."""
        raise NotImplementedError

    def calibrate(self, batches: TargetBatches) -> None:
        """Adapt output statistics to the training targets (default: nothing).

        Args:
            batches: Chunks ``(targets (n, C, H, W), valid (n, H, W) or None)``.
        """

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """What downstream code consumes: the target-modality output of ``x``."""
        return self(x)


class OutputScale(nn.Module):
    """Per-channel affine de-normalisation ``y * std + mean`` fitted to training targets.

    Lets a network predict targets in any unit (raw scanner coordinates, large feature
    magnitudes) while its layers work at unit scale. Saved with the state dict.

    Args:
        channels: Output channels.
        fitted: Number of leading channels whose statistics :meth:`fit` sets; the rest stay
            ``(mean 0, std 1)`` (e.g. the xyz validity logit).
    """

    def __init__(self, channels: int, fitted: int | None = None) -> None:
        super().__init__()
        self.fitted = channels if fitted is None else fitted
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` unit-scale outputs to target units."""
        return y * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def fit(self, batches: TargetBatches, *, nonzero_valid: bool = False) -> None:
        """Set mean/std of the fitted channels from valid target positions.

        Args:
            batches: Chunks ``(targets (n, C, H, W), valid (n, H, W) or None)``.
            nonzero_valid: Also treat positions whose target is all zero as invalid
                (organized point clouds: zero = no point).
        """
        k = self.fitted
        total = torch.zeros(k, dtype=torch.float64)
        total_sq = torch.zeros(k, dtype=torch.float64)
        count = 0.0
        for targets, valid in batches:
            t = targets[:, :k].to(torch.float64).cpu()
            mask = torch.ones(t.shape[0], *t.shape[2:], dtype=torch.bool)
            mask = mask if valid is None else mask & valid.cpu().bool()
            mask = mask & (t != 0).any(dim=1) if nonzero_valid else mask
            m = mask.unsqueeze(1).to(torch.float64)
            total += (t * m).sum(dim=(0, 2, 3))
            total_sq += (t * t * m).sum(dim=(0, 2, 3))
            count += float(m.sum())
        if count == 0:
            return
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        self.mean[:k] = mean.to(self.mean)
        self.std[:k] = std.to(self.std)


def per_patch(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a channels-last ``layer`` to every patch of ``(B, C, h, w)``."""
    return layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
