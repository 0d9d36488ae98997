"""Resize and normalise RGB images and masks for a model input.

Resizing goes through PIL, like the reference's ``transforms.Resize`` on PIL images, so a
given interpolation gives the same pixels. Mean and std always come from the extractor's own
data config (timm's ``pretrained_cfg``), never from constants here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _pil_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) >= 1, got {size!r}")
    return int(size[1]), int(size[0])


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize an RGB image and scale it to ``[0, 1]``.

    Args:
        rgb: ``(H0, W0, 3)`` uint8 image.
        size: Target ``(H, W)``.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos``.

    Returns:
        ``(3, H, W)`` float32 tensor in ``[0, 1]``.
    """
    return torch.from_numpy(resized_unit(rgb, size, interpolation).transpose(2, 0, 1).copy())


def resized_unit(rgb: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """:func:`resize_rgb` as an ``(H, W, 3)`` float32 array, channels last (no torch)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; known: {', '.join(_INTERPOLATIONS)}")
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if img.size != _pil_size(size):
        img = img.resize(_pil_size(size), resample=_INTERPOLATIONS[interpolation])
    return np.asarray(img, dtype=np.float32) / 255.0


def _stats(x: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if t.shape != (x.shape[-3],):
        raise ValueError(f"{len(values)} statistics for {x.shape[-3]} channels")
    return t.view(-1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel.

    Args:
        x: ``(3, H, W)`` or ``(B, 3, H, W)`` image in ``[0, 1]``.
        mean: Per-channel means.
        std: Per-channel standard deviations.

    Returns:
        Normalised tensor of ``x``'s shape.
    """
    return (x - _stats(x, mean)) / _stats(x, std)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``x * std + mean`` per channel.

    Args:
        x: ``(3, H, W)`` or ``(B, 3, H, W)`` normalised image.
        mean: Per-channel means used to normalise.
        std: Per-channel standard deviations used to normalise.

    Returns:
        Image of ``x``'s shape, back in ``[0, 1]`` scale.
    """
    return x * _stats(x, std) + _stats(x, mean)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a boolean mask (PIL semantics, pixel centres).

    Args:
        mask: ``(H0, W0)`` bool (or 0/non-zero) mask.
        size: Target ``(H, W)``.

    Returns:
        ``(H, W)`` bool tensor.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    img = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255)
    img = img.resize(_pil_size(size), resample=Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(img) > 127)
