"""EfficientNet-Lite's two aggregation orders (``RGBFeatureConfig.aggregation``) on small tensors."""

from __future__ import annotations

import pytest
import torch

from cmdiad.config import RGBFeatureConfig
from cmdiad.errors import ConfigError
from cmdiad.features import build_extractor
from cmdiad.features.rgb import aggregate_stages
from cmdiad.pipeline.presets import preset


def test_per_stage_counts_zero_padding_at_the_border() -> None:
    ones = torch.ones(1, 1, 4, 4)
    out = aggregate_stages([ones], (4, 4), "per_stage")[0, 0]
    assert out[0, 0] == pytest.approx(4 / 9) and out[0, 1] == pytest.approx(6 / 9)
    assert out[1, 1] == pytest.approx(1.0)
    # Upsampling first averages in-image neighbours only: a constant map stays constant.
    assert torch.allclose(aggregate_stages([ones], (4, 4), "upsample_first"), ones)


def test_per_stage_pools_the_coarse_stage_on_its_own_grid() -> None:
    fine = torch.zeros(1, 1, 4, 4)
    coarse = torch.ones(1, 1, 2, 2)  # every coarse cell is a corner: 4/9 after the padded average
    out = aggregate_stages([fine, coarse], (4, 4), "per_stage")
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[0, 1], torch.full((4, 4), 4 / 9))
    torch.testing.assert_close(aggregate_stages([fine, coarse], (4, 4), "upsample_first")[0, 1], torch.ones(4, 4))


def test_orders_agree_inside_for_a_single_stage() -> None:
    m = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    a, b = aggregate_stages([m], (6, 7), "per_stage"), aggregate_stages([m], (6, 7), "upsample_first")
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
    assert not torch.allclose(a[..., 0, :], b[..., 0, :])
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_stages([m], (6, 7), "sideways")


def test_extractor_follows_the_config() -> None:
    torch.manual_seed(0)
    ext = build_extractor(RGBFeatureConfig(pretrained=False, aggregation="per_stage"))
    x = torch.randn(1, 3, 48, 64)
    want = aggregate_stages(list(ext(x).values()), ext.grid_size((48, 64)), "per_stage")
    torch.testing.assert_close(ext.patch_features(x).features, want)
    with pytest.raises(ConfigError, match="aggregation"):
        RGBFeatureConfig(aggregation="sideways")


def test_default_preset_splits_the_views_and_paper_keeps_its_extractor() -> None:
    assert preset("default")["detector"]["rgb"]["aggregation"] == "split"
    assert "aggregation" not in preset("paper")["detector"]["rgb"]
    assert RGBFeatureConfig().aggregation == "upsample_first"  # saved detectors without the key keep their features


def test_split_carries_both_orders_and_says_where_the_map_view_starts() -> None:
    m = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)), torch.randn(2, 4, 3, 3)]
    out = aggregate_stages(m, (6, 6), "split")
    torch.testing.assert_close(out[:, :7], aggregate_stages(m, (6, 6), "upsample_first"))
    torch.testing.assert_close(out[:, 7:], aggregate_stages(m, (6, 6), "per_stage"))
    torch.manual_seed(0)
    one = build_extractor(RGBFeatureConfig(pretrained=False))
    torch.manual_seed(0)
    both = build_extractor(RGBFeatureConfig(pretrained=False, aggregation="split"))
    assert one.score_split is None and both.score_split == one.out_channels
    assert both.out_channels == 2 * one.out_channels
    x = torch.randn(1, 3, 32, 48)
    assert both.patch_features(x).features.shape[1] == both.out_channels
