"""Patch distances -> anomaly maps at the image size (method-spec §3.3 step 3).

Two blur modes: ``float`` (clean: a float Gaussian, separable, kernel truncated at 4σ, reflect
padding) and ``pil8bit`` (reference parity: the map is divided by its max, truncated to 8 bits,
blurred with PIL's ``GaussianBlur(radius=σ)`` and scaled back; the quantisation creates ties
that change pixel metrics slightly, method-spec §8 item 3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ``ceil(truncate·σ)``; shape ``(2r + 1,)``."""
    radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable float Gaussian blur with reflect padding.

    Args:
        maps: ``(B, H, W)``.
        sigma: Standard deviation in pixels; 0 returns the input.

    Returns:
        ``(B, H, W)`` float32.
    """
    if sigma <= 0:
        return maps.float()
    kernel = gaussian_kernel1d(sigma).to(maps.device)
    x = maps.float()[:, None]
    for dim in (2, 3):
        r = kernel.numel() // 2
        size = x.shape[dim]
        # Reflect padding needs pad < size; replicate covers maps narrower than the kernel.
        mode = "reflect" if r < size else "replicate"
        pad = (r, r, 0, 0) if dim == 3 else (0, 0, r, r)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        x = F.conv2d(F.pad(x, pad, mode=mode), weight)
    return x[:, 0]


def pil8bit_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference's blur: /max, floor(255·v) to uint8, PIL GaussianBlur(σ), /255·max.

    Args:
        maps: ``(B, H, W)`` non-negative.
        sigma: PIL radius (= σ).

    Returns:
        ``(B, H, W)`` float32 on the input's device.
    """
    out = []
    for m in maps.detach().float().cpu().numpy():
        peak = float(m.max())
        if peak <= 0:
            out.append(np.zeros_like(m))
            continue
        img = Image.fromarray(np.floor(255.0 * m / peak).clip(0, 255).astype(np.uint8), mode="L")
        blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float32)
        out.append(blurred / 255.0 * peak)
    return torch.from_numpy(np.stack(out)).to(maps.device)


def anomaly_map(
    patch_scores: torch.Tensor, image_size: tuple[int, int], *, sigma: float, mode: str = "float"
) -> torch.Tensor:
    """Upsample patch scores to the image size and blur them.

    Args:
        patch_scores: ``(B, h, w)``.
        image_size: Output ``(H, W)``.
        sigma: Blur σ in output pixels.
        mode: ``"float"`` or ``"pil8bit"`` (see the module docstring).

    Returns:
        ``(B, H, W)`` float32.
    """
    if mode not in ("float", "pil8bit"):
        raise ValueError(f"unknown blur mode {mode!r}; known: float, pil8bit")
    up = F.interpolate(
        patch_scores.float()[:, None], size=tuple(image_size), mode="bilinear", align_corners=False
    )[:, 0]
    if mode == "pil8bit":
        return pil8bit_blur(up, sigma)
    return gaussian_blur(up, sigma)
