"""Overlays, contours, depth renders and PNG output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmdiad.viz.heatmaps import (
    annotate,
    calibrated_scale,
    colormap_table,
    depth_render,
    draw_contour,
    mask_contour,
    overlay,
    resize_map,
    save_png,
)


def test_overlay_shape_dtype_and_map_resize(rng) -> None:
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = overlay(rgb, rng.random((12, 16)).astype(np.float16), vmin=0.0, vmax=1.0)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_hotter_map_changes_overlay_only_where_map_is_high(rng) -> None:
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cold = np.zeros((32, 32), np.float32)
    hot = cold.copy()
    hot[8:16, 8:16] = 1.0
    high = hot > 0
    a = overlay(rgb, cold, vmin=0.0, vmax=1.0).astype(int)
    b = overlay(rgb, hot, vmin=0.0, vmax=1.0).astype(int)
    changed = np.any(a != b, axis=2)
    assert changed[high].all() and not changed[~high].any()
    # jet: the hot end is red, the cold end blue.
    assert (b[8:16, 8:16, 0] - a[8:16, 8:16, 0]).min() > 50
    assert (a[8:16, 8:16, 2] - b[8:16, 8:16, 2]).min() > 50


def test_overlay_alpha_limits_and_clipping(rng) -> None:
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    amap = rng.random((8, 8)) * 10
    np.testing.assert_array_equal(overlay(rgb, amap, vmin=0, vmax=1, alpha=0.0), rgb)
    full = overlay(rgb, amap, vmin=-5.0, vmax=-4.0, alpha=1.0)  # everything above vmax
    assert (full == colormap_table("jet")[-1]).all()
    flat = overlay(rgb, amap, vmin=3.0, vmax=3.0, alpha=1.0)  # empty range: coldest colour
    assert (flat == colormap_table("jet")[0]).all()


def test_overlay_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)), vmin=0, vmax=1)
    with pytest.raises(ValueError, match="anomaly map"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4)), vmin=0, vmax=1)


def test_resize_map_is_bilinear_and_keeps_constants() -> None:
    np.testing.assert_allclose(resize_map(np.full((7, 5), 2.5), (20, 30)), 2.5, rtol=1e-6)
    ramp = resize_map(np.array([[0.0, 1.0]]), (1, 8))[0]
    assert np.all(np.diff(ramp) >= 0) and 0.0 <= ramp[0] < ramp[-1] <= 1.0


def test_mask_contour_is_the_outline() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:8] = True
    outline = mask_contour(mask)
    assert outline.sum() == 2 * 5 + 2 * 3
    assert not outline[3:6, 4:7].any() and not (outline & ~mask).any()
    edge = np.zeros((4, 4), bool)
    edge[:, :2] = True
    assert mask_contour(edge).sum() == edge.sum()  # a 2-px strip on the border is all outline


def test_draw_contour_paints_only_the_outline() -> None:
    img = np.zeros((6, 6, 3), np.uint8)
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True  # nearest-resized to a 2x2 block
    out = draw_contour(img, mask, colour=(1, 2, 3))
    assert (out[2:4, 2:4] == (1, 2, 3)).all() and out.sum() == 4 * 6


def _bump_cloud(size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    z = 1.0 - 0.1 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02)
    xyz = np.stack([xx, yy, z], axis=-1).astype(np.float32)
    xyz[:5] = 0.0
    return xyz


def test_depth_render_black_background_and_nearer_is_brighter() -> None:
    xyz = _bump_cloud()
    img = depth_render(xyz)
    assert img.shape == xyz.shape and img.dtype == np.uint8
    assert (img[:5] == 0).all() and (img[5:] > 0).all()
    assert img[20, 20, 0] > img[35, 35, 0]  # bump top (z smaller, nearer) vs flat far corner
    assert (depth_render(np.zeros((4, 4, 3))) == 0).all()


def test_depth_render_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="point cloud"):
        depth_render(np.zeros((4, 4)))


def test_save_png_roundtrip(tmp_path, rng) -> None:
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "x.png"
    save_png(path, img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    with pytest.raises(ValueError):
        save_png(path, img.astype(np.float32))


def test_overlay_keeps_good_pixels_untouched(rng) -> None:
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    amap = np.full((32, 32), 1.0, np.float32)
    amap[4:12, 4:12] = 3.0
    out = overlay(rgb, amap, vmin=0.5, vmax=3.0, alpha=0.6, good_level=1.5)
    hot = amap > 1.5
    np.testing.assert_array_equal(out[~hot], rgb[~hot])  # the part shows through where it is normal
    assert np.abs(out[hot].astype(int) - rgb[hot]).max() > 30


def test_calibrated_scale_is_fixed_by_the_model_not_the_map() -> None:
    cal = {"good_p50": 1.0, "good_p999": 2.0}
    small, large = np.zeros((4, 4)), np.full((4, 4), 50.0)
    assert calibrated_scale(cal, small) == calibrated_scale(cal, large) == (1.0, 2.0, 3.0)
    assert calibrated_scale(None, large)[2] == 50.0  # older models: the part's own map, never a batch


def test_annotate_draws_verdict_and_colour_bar(rng) -> None:
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    scale = (0.0, 1.0, 2.0)
    fail = annotate(img, scale=scale, score=5.0, threshold=1.0, min_height=64)
    ok = annotate(img, scale=scale, score=0.5, threshold=1.0, min_height=64)
    assert fail.shape[0] > 64 and fail.shape[1] >= 80 and fail.dtype == np.uint8
    np.testing.assert_array_equal(fail[:64, (fail.shape[1] - 80) // 2 :][:64, :80][::2, ::2], img)
    strip_fail, strip_ok = fail[64:], ok[64:]
    red = (strip_fail[..., 0] > 150) & (strip_fail[..., 1] < 60)
    green = (strip_ok[..., 1] > 100) & (strip_ok[..., 0] < 60) & (strip_ok[..., 2] < 100)
    assert red.sum() > 100 and green.sum() > 100  # FAIL box red, PASS box green
    jet = colormap_table("jet")
    row = strip_fail[strip_fail.shape[0] // 2 :]
    assert any((row == jet[0]).all(axis=2).any(axis=1)) and any((row == jet[-1]).all(axis=2).any(axis=1))
