from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdiad.preprocessing.image import denormalize, normalize, resize_mask, resize_rgb


def test_resize_rgb_shape_range_and_orientation(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    out = resize_rgb(img, (12, 20))
    assert out.shape == (3, 12, 20) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_resize_rgb_same_size_is_exact_scaling(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    out = resize_rgb(img, (8, 6))
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), img / 255.0, atol=1e-7)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_resize_rgb_keeps_constant_colour(interpolation: str) -> None:
    img = np.zeros((17, 23, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 128, 250
    out = resize_rgb(img, (40, 9), interpolation)
    expected = torch.tensor([10, 128, 250], dtype=torch.float32) / 255
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected)
    assert float((out - expected.view(3, 1, 1)).abs().max()) < 1e-6


def test_resize_rgb_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_rgb(np.zeros((4, 4, 3), dtype=np.float32), (2, 2))
    with pytest.raises(ValueError, match="interpolation"):
        resize_rgb(np.zeros((4, 4, 3), dtype=np.uint8), (2, 2), "cubic-ish")


def test_normalize_round_trip_single_and_batched() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 5, 4)
    y = normalize(x, mean, std)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.456) / 0.224)
    torch.testing.assert_close(denormalize(y, mean, std), x)
    torch.testing.assert_close(normalize(x[0], mean, std), y[0])


def test_normalize_half_half_maps_to_minus_one_one() -> None:
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    out = normalize(x, (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 0.0, 1.0]))


def test_normalize_rejects_wrong_statistics() -> None:
    with pytest.raises(ValueError, match="statistics"):
        normalize(torch.rand(3, 4, 4), (0.5, 0.5), (0.5, 0.5))


def test_resize_mask_nearest_duplicates_pixels() -> None:
    mask = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    out = resize_mask(mask, (4, 6))
    assert out.dtype == torch.bool and out.shape == (4, 6)
    expected = np.kron(mask, np.ones((2, 2), dtype=bool))
    np.testing.assert_array_equal(out.numpy(), expected)


def test_resize_mask_downsample_keeps_sampled_pixels() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:, :4] = True
    out = resize_mask(mask, (2, 2))
    np.testing.assert_array_equal(out.numpy(), [[False, False], [True, False]])
