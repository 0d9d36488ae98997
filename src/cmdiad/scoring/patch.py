"""Patch distances -> anomaly maps at the image size (method-spec §3.3 step 3).

Two blur modes: ``float`` (clean: a float Gaussian, separable, kernel truncated at 4σ, reflect
padding) and ``pil8bit`` (reference parity: the map is divided by its max, truncated to 8 bits,
blurred with PIL's ``GaussianBlur(radius=σ)`` and scaled back; the quantisation creates ties
that change pixel metrics slightly, method-spec §8 item 3).

Both the bilinear upsampling (``align_corners=False``) and the padded separable blur are linear
maps along each axis, so the ``float`` mode applies them as two small matrices per axis,
``A_h @ P @ A_w^T`` with ``A = blur @ upsample`` (float64 where the device has it): the same
result as upsampling then convolving, to float32 rounding, at a fraction of the cost (no
``(B, H, W)`` intermediate, no large-kernel convolution).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ``ceil(truncate·σ)``; shape ``(2r + 1,)``."""
    return torch.from_numpy(_kernel1d(sigma, truncate))


def _kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    # numpy, so that a kernel built while a module is traced for ONNX export is a constant, not ops
    radius = max(1, math.ceil(truncate * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(np.float32(-0.5) * (x / np.float32(sigma)) ** 2)
    return k / k.sum(dtype=np.float32)


def _reflect(i: int, size: int, mode: str) -> int:
    """Source index of padded position ``i`` (``F.pad`` ``reflect``: no edge repeat; or ``replicate``)."""
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    period = 2 * (size - 1)
    i = abs(i) % period if period else 0
    return period - i if i >= size else i


@functools.lru_cache(maxsize=64)
def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """``(size, size)`` float64 matrix of the padded 1-D blur along one axis (identity when σ <= 0).

    Built with numpy: the matrices are cached on first use, and a first use while a module is
    traced for ONNX export would otherwise record every element's update in the graph (about
    550,000 nodes for a 192-px map, an export of many minutes).
    """
    if sigma <= 0:
        return torch.eye(size, dtype=torch.float64)
    kernel = _kernel1d(sigma).astype(np.float64)
    r = kernel.size // 2
    mode = "reflect" if r < size else "replicate"  # as gaussian_blur: reflect needs pad < size
    m = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        for k in range(kernel.size):
            m[i, _reflect(i + k - r, size, mode)] += kernel[k]
    return torch.from_numpy(m)


@functools.lru_cache(maxsize=64)
def _upsample_matrix(src: int, dst: int) -> torch.Tensor:
    """``(dst, src)`` float64 matrix of 1-D linear interpolation, ``align_corners=False``."""
    eye = torch.eye(src, dtype=torch.float64)[None]  # (1, src channels, src length)
    return F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T.contiguous()


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _apply_axes(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ x @ cols^T`` per map of ``x`` ``(B, h, w)``, computed in float64 where possible."""
    dtype = _compute_dtype(x.device)
    rows, cols = rows.to(x.device, dtype), cols.to(x.device, dtype)
    return (rows @ x.to(dtype) @ cols.T).float()


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
    h, w = maps.shape[-2:]
    return _apply_axes(maps, _blur_matrix(int(h), float(sigma)), _blur_matrix(int(w), float(sigma)))


def gaussian_blur_conv(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The direct form of :func:`gaussian_blur` (two padded 1-D convolutions), kept as its reference."""
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
    if mode == "float":
        (h, w), (hh, ww), sig = patch_scores.shape[-2:], tuple(int(v) for v in image_size), float(sigma)
        rows = _blur_matrix(hh, sig) @ _upsample_matrix(int(h), hh)
        cols = _blur_matrix(ww, sig) @ _upsample_matrix(int(w), ww)
        return _apply_axes(patch_scores, rows, cols)
    up = F.interpolate(
        patch_scores.float()[:, None], size=tuple(image_size), mode="bilinear", align_corners=False
    )[:, 0]
    return pil8bit_blur(up, sigma)


def image_score(patch_image: torch.Tensor, amap: torch.Tensor, mode: str) -> torch.Tensor:
    """A bank's image scores ``(B,)`` per ``MemoryConfig.image_score``.

    Args:
        patch_image: ``(B,)`` the (re-weighted) maximum patch scores.
        amap: ``(B, H, W)`` the blurred anomaly maps of the same samples.
        mode: ``patch_max`` (``patch_image`` as it is) or ``map_max`` (each map's maximum).
    """
    if mode == "patch_max":
        return patch_image
    if mode == "map_max":
        return amap.reshape(amap.shape[0], -1).amax(dim=1)
    raise ValueError(f"unknown image_score {mode!r}; known: patch_max, map_max")

