"""bench_mtfi_signal: the per-row offset choice, the fused map, and the synthetic anomalies."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_fusion as bf  # noqa: E402
import bench_mtfi_signal as bms  # noqa: E402


def test_fuse_raises_the_hallucinated_map_or_leaves_it_out() -> None:
    z = np.array([[1.0, 0.8], [0.0, -2.0]])  # (pixels, streams): main, hallucinated
    assert np.array_equal(bf.fuse(z, bf.MAIN_ONLY), [1.0, 0.0])
    assert np.allclose(bf.fuse(z, 0.5), [1.3, 0.0])
    assert bms.offset_name(bf.MAIN_ONLY) == "main only" and bms.offset_name(0.5) == "0.5"


def _foreground(h: int = 64, w: int = 64) -> np.ndarray:
    fg = np.zeros((h, w), bool)
    fg[8:56, 8:56] = True
    return fg


def test_the_label_free_offset_of_a_left_out_map_is_main_only() -> None:
    from cmdiad.config import FusionConfig

    assert bf.label_free_offset(FusionConfig(kind="gated", pixel_offset=0.5)) == 0.5
    assert bf.label_free_offset(FusionConfig(kind="gated", pixel_combine="real")) == bf.MAIN_ONLY


def test_blob_mask_lies_in_the_foreground_and_covers_a_few_percent() -> None:
    fg = _foreground()
    m = bms.blob_mask(fg, np.random.default_rng(0))
    assert m.sum() >= 20 and not (m & ~fg).any()
    assert m.sum() <= 0.05 * fg.sum()
    with pytest.raises(ValueError, match="too small"):
        bms.blob_mask(np.zeros((64, 64), bool), np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["appearance", "shading"])
def test_camera_anomaly_changes_the_image_only_on_the_part_and_masks_the_change(kind: str) -> None:
    fg = _foreground()
    rng = np.random.default_rng(1)
    x = torch.zeros(3, 64, 64)
    others = [torch.full((3, 64, 64), 0.7)]
    out, m = bms.camera_anomaly(x, fg, kind, others, rng)
    changed = (out != x).any(0).numpy()
    assert changed.any() and not (changed & ~fg).any()
    if kind == "appearance":
        assert np.array_equal(changed, m)  # exactly the masked pixels take the other part's texture
    else:
        assert (changed & m).sum() >= 0.5 * m.sum()  # the bump's gradient is where the mask is
    assert x.abs().sum() == 0  # the input is not modified in place
    with pytest.raises(ValueError, match="unknown camera anomaly"):
        bms.camera_anomaly(x, fg, "scratch", others, rng)


def test_scan_anomaly_moves_only_the_depth_of_foreground_points() -> None:
    fg = _foreground()
    yy, xx = np.mgrid[:64, :64].astype(np.float32) / 1000
    x = torch.from_numpy(np.stack([xx, yy, np.full_like(xx, 0.5)]) * fg)
    out, m = bms.scan_anomaly(x, fg, np.random.default_rng(2))
    assert torch.equal(out[:2], x[:2])  # x and y untouched
    moved = (out[2] != x[2]).numpy()
    assert moved[m].all() and not (moved & ~fg).any()
    extent = 0.047  # the part spans 48 px of 1 mm
    assert 0.02 * extent * 0.99 <= float((out[2] - x[2]).abs().max()) <= 0.05 * extent * 1.01


def test_labelled_draw_takes_k_parts_per_defect_type_and_leaves_one_to_score() -> None:
    import bench_mtfi_labelled as bml

    defects = np.array(["good"] * 4 + ["bump"] * 3 + ["stain"] * 2)
    picked = bml.draw(defects, 2, np.random.default_rng(0))
    assert sorted(defects[picked].tolist()) == ["bump", "bump", "stain"]  # stain keeps one of its two
    assert "good" not in defects[picked]


@pytest.mark.parametrize("seeing", [0, 1])
def test_labelled_choice_follows_the_stream_that_localises_the_labelled_defects(seeing: int) -> None:
    import bench_mtfi_labelled as bml

    rng = np.random.default_rng(3)
    z_val = rng.standard_normal((4, 16, 16, 2)) * 0.3
    z = rng.standard_normal((4, 16, 16, 2)) * 0.3
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:8, 4:8] = True
    z[:, 4:8, 4:8, seeing] += 1.5  # only one stream sees the defect
    defects = np.array(["bump"] * 4)
    per = bml.labelled_scores(z_val, z, masks, defects, np.arange(2))
    assert set(per) == set(bms.CANDIDATES) and all(set(r) == {"bump"} for r in per.values())
    chosen = bml.choose(per, 0.5, "library")
    if seeing == 0:
        assert chosen == bf.MAIN_ONLY  # the hallucinated map only adds false alarms
    else:
        assert chosen >= 0.5  # raised, the hallucinated map's defect wins over the main map's noise
