"""Anomaly maps: size, blur invariants, PIL 8-bit parity mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cmdiad.scoring.patch import anomaly_map, gaussian_blur, gaussian_blur_conv, gaussian_kernel1d


def test_output_size_and_bilinear_upsample() -> None:
    patch = torch.rand(2, 4, 6)
    out = anomaly_map(patch, (16, 24), sigma=0.0)
    assert out.shape == (2, 16, 24) and out.dtype == torch.float32
    # 4x upsampling, align_corners=False: interior pixel centres interpolate the patch grid.
    assert torch.allclose(out[:, 1::4, 1::4].mean(), patch.mean(), atol=0.05)


@pytest.mark.parametrize("mode", ["float", "pil8bit"])
def test_blur_preserves_a_constant_map(mode: str) -> None:
    out = anomaly_map(torch.full((1, 7, 7), 3.0), (28, 28), sigma=4.0, mode=mode)
    assert torch.allclose(out, torch.full_like(out, 3.0), atol=1e-5)


def test_float_blur_smooths_and_keeps_mass() -> None:
    x = torch.zeros(1, 41, 41)
    x[0, 20, 20] = 1.0
    y = gaussian_blur(x, 2.0)
    assert float(y.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(y.max()) < 0.1 and int(y.argmax()) == 20 * 41 + 20
    k = gaussian_kernel1d(2.0)
    assert k.numel() == 2 * 8 + 1 and float(k.sum()) == pytest.approx(1.0)


def test_pil8bit_quantises_like_the_reference() -> None:
    torch.manual_seed(1)
    patch = torch.rand(1, 4, 4) * 7.0
    out = anomaly_map(patch, (32, 32), sigma=2.0, mode="pil8bit")
    up = torch.nn.functional.interpolate(patch[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    peak = float(up.max())
    img = Image.fromarray(np.floor(255 * up[0, 0].numpy() / peak).astype(np.uint8))
    ref = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=2.0)), dtype=np.float32) / 255 * peak
    assert np.allclose(out[0].numpy(), ref, atol=1e-6)
    levels = out[0] / peak * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # only 8-bit levels
    assert len(torch.unique(out)) <= 256


def test_pil8bit_zero_map_and_bad_mode() -> None:
    assert (anomaly_map(torch.zeros(1, 2, 2), (8, 8), sigma=1.0, mode="pil8bit") == 0).all()
    with pytest.raises(ValueError, match="blur mode"):
        anomaly_map(torch.zeros(1, 2, 2), (8, 8), sigma=1.0, mode="box")


def test_small_maps_use_replicate_padding() -> None:
    out = anomaly_map(torch.rand(1, 2, 2), (6, 6), sigma=4.0)
    assert out.shape == (1, 6, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize(("grid", "size", "sigma"), [((28, 28), (224, 224), 4.0), ((7, 5), (20, 30), 4.0),
                                                     ((6, 6), (9, 13), 2.5), ((5, 4), (40, 32), 0.0)])
def test_matrix_form_equals_upsample_then_convolve(grid, size, sigma) -> None:
    import torch.nn.functional as F

    scores = torch.rand(3, *grid, generator=torch.Generator().manual_seed(1)) * 10
    up = F.interpolate(scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    want = gaussian_blur_conv(up, sigma)
    torch.testing.assert_close(anomaly_map(scores, size, sigma=sigma), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gaussian_blur(up, sigma), want, rtol=1e-6, atol=1e-6)
