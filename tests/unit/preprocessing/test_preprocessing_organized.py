"""Nearest resize of organized clouds and the foreground mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdiad.preprocessing.organized import foreground_mask, resize_organized


def test_resize_never_blends_valid_and_invalid(rng: np.random.Generator) -> None:
    xyz = rng.uniform(1, 2, size=(37, 53, 3)).astype(np.float32)
    xyz[:, :20] = 0
    out = resize_organized(xyz, (24, 30))
    assert out.shape == (3, 24, 30) and out.dtype == torch.float32
    source_points = {tuple(p) for p in xyz.reshape(-1, 3).tolist()}
    assert all(tuple(p) in source_points for p in out.permute(1, 2, 0).reshape(-1, 3).tolist())


def test_resize_accepts_tensor_and_identity_size() -> None:
    xyz = torch.arange(2 * 3 * 3, dtype=torch.float64).view(2, 3, 3)
    out = resize_organized(xyz, (2, 3))
    assert torch.equal(out, xyz.permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="organized cloud"):
        resize_organized(np.zeros((4, 4)), (2, 2))


def test_resize_upsamples_by_repetition() -> None:
    xyz = np.array([[[1, 1, 1], [2, 2, 2]]], dtype=np.float32)  # (1, 2, 3)
    out = resize_organized(xyz, (2, 4))
    assert out[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


def test_foreground_needs_all_coordinates_nonzero_and_finite() -> None:
    xyz = torch.ones(1, 3, 2, 3)
    xyz[0, 0, 0, 0] = 0  # one zero coordinate is enough to drop the point
    xyz[0, :, 0, 1] = 0
    xyz[0, 2, 1, 0] = float("nan")
    xyz[0, 1, 1, 1] = float("inf")
    mask = foreground_mask(xyz)
    assert mask.tolist() == [[[False, False, True], [False, False, True]]]
    with pytest.raises(ValueError, match="B, 3, H, W"):
        foreground_mask(torch.ones(3, 2, 2))
