"""The feature-extractor contract shared by every RGB and point-cloud extractor.

An extractor is an ``nn.Module`` in eval mode whose ``forward`` returns ``dict[str, Tensor]``
(timm's contract) and whose ``feature_info`` lists channels and stride per output. Downstream
sizes (patch grid, network widths) are computed from it, never written as literals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cmdiad.registry import Registry
from cmdiad.types import PatchFeatures


@dataclass(frozen=True)
class FeatureInfo:
    """One output of an extractor.

    Attributes:
        name: Key in the dict returned by ``forward``.
        num_chs: Channels of that output.
        reduction: Input pixels per output cell (stride).
    """

    name: str
    num_chs: int
    reduction: int


def image_view(pf: PatchFeatures, split: int | None) -> PatchFeatures:
    """The channels of ``pf`` before ``split`` (all of them when ``split`` is None).

    Raises:
        ValueError: When ``pf`` has no channel from ``split`` on (it is not split features).
    """
    if split is None:
        return pf
    if pf.features.shape[1] <= split:
        raise ValueError(f"features have {pf.features.shape[1]} channels; split features have more than {split}")
    return PatchFeatures(pf.features[:, :split], pf.valid)


class FeatureExtractor(nn.Module):
    """Base class: frozen backbone turning a modality's input into patch features.

    Subclasses set ``modality`` (``"rgb"`` or ``"xyz"``), ``feature_info`` and
    ``patch_stride``, and implement :meth:`preprocess`, :meth:`forward` and
    :meth:`patch_features`.
    """

    modality: str = ""
    feature_info: list[FeatureInfo]
    patch_stride: int = 1
    score_split: int | None = None
    """None, or the channel where the features' map view starts: the channels before it are
    what a bank scores images with, the ones from it on what it scores anomaly maps with
    (:class:`~cmdiad.memory.bank.SplitBank`)."""

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`patch_features`' output."""
        raise NotImplementedError

    def image_view(self, pf: PatchFeatures) -> PatchFeatures:
        """What distillers read and hallucinate of this extractor's features: the image view
        (channels before :attr:`score_split`) of split features, all channels otherwise."""
        return image_view(pf, self.score_split)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an input of ``image_size`` ``(H, W)``."""
        return image_size[0] // self.patch_stride, image_size[1] // self.patch_stride

    def preprocess(self, array: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
        """Turn one native-resolution array into a model input.

        Args:
            array: ``(H0, W0, 3)`` uint8 image or float32 organized point cloud.
            image_size: Target ``(H, W)``.

        Returns:
            ``(3, H, W)`` float32 tensor, normalised as the extractor's own data config says.
        """
        raise NotImplementedError

    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        """Patch features of a preprocessed batch.

        Args:
            x: ``(B, 3, H, W)`` preprocessed input on the module's device.

        Returns:
            Features ``(B, out_channels, H // patch_stride, W // patch_stride)`` and validity.
        """
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters or buffers (CPU when it has none)."""
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")


class PointCloudExtractor(FeatureExtractor):
    """Base of extractors of organized point clouds: one output, nearest-resized input.

    Subclasses set ``feature_info`` (a single entry) and implement :meth:`patch_features`.
    """

    modality = "xyz"

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`patch_features`' output."""
        return self.feature_info[0].num_chs

    def preprocess(self, array: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
        """Nearest resize of an ``(H0, W0, 3)`` organized cloud to ``(3, H, W)``; no normalisation."""
        from cmdiad.preprocessing.organized import resize_organized

        return resize_organized(array, image_size)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, C, h, w)}`` patch features of ``(B, 3, H, W)`` organized clouds."""
        return {self.feature_info[0].name: self.patch_features(x).features}


EXTRACTORS: Registry[FeatureExtractor] = Registry("extractor")
"""Extractor factories; each is called with its config (RGBFeatureConfig or PointFeatureConfig)."""


def register_family(names: Iterable[str], build: Callable[[str, Any], FeatureExtractor]) -> None:
    """Register one factory per name of a model family; ``build(name, cfg)`` makes the extractor."""
    for name in names:

        def factory(cfg: Any, _name: str = name) -> FeatureExtractor:
            return build(_name, cfg)

        factory.__name__ = f"build_{name}"
        factory.__doc__ = f"Build the {name} extractor from its config."
        EXTRACTORS.register(name)(factory)


def to_grid(pf: PatchFeatures, grid: tuple[int, int]) -> PatchFeatures:
    """Resample patch features onto another grid.

    Downsampling averages only valid patches; upsampling repeats (nearest), like the
    reference's 2x duplication of the ViT grid.

    Args:
        pf: Features ``(B, C, h, w)`` and validity ``(B, h, w)``.
        grid: Target ``(h2, w2)``.

    Returns:
        Features ``(B, C, h2, w2)``; a target patch is valid when any source patch under it was.
    """
    if pf.grid == tuple(grid):
        return pf
    valid = pf.valid.unsqueeze(1).to(pf.features.dtype)
    if grid[0] <= pf.grid[0] and grid[1] <= pf.grid[1]:
        num = nn.functional.adaptive_avg_pool2d(pf.features * valid, grid)
        den = nn.functional.adaptive_avg_pool2d(valid, grid)
        feats = num / den.clamp_min(1e-8)
        return PatchFeatures(feats, den.squeeze(1) > 0)
    feats = nn.functional.interpolate(pf.features, size=grid, mode="nearest")
    v = nn.functional.interpolate(valid, size=grid, mode="nearest").squeeze(1) > 0
    return PatchFeatures(feats, v)
