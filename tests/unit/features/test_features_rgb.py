"""Contract tests over the registered RGB extractors, and EfficientNet-Lite's shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import RGBFeatureConfig
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.features import EXTRACTORS, FeatureExtractor, build_extractor
from cmdiad.features.rgb import (
    build_efficientnet_lite,
    lukemelas_to_timm,
    read_state_dict,
    shipped_lite_weights,
)

RGB_NAMES = [n for n in EXTRACTORS.names() if n.startswith(("efficientnet_lite", "dino"))]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
_BUILT: dict[str, FeatureExtractor] = {}


def random_extractor(name: str) -> FeatureExtractor:
    """Random-init extractor, built once per test session (ViT-B init takes seconds)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = build_extractor(RGBFeatureConfig(name=name, pretrained=False))
    return _BUILT[name]


def test_all_rgb_extractors_registered() -> None:
    expected = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert expected | {"dino_vitb8", "dino_vits8", "dinov2_vitb14"} <= set(RGB_NAMES)
    assert RGBFeatureConfig().name == "efficientnet_lite0"


@pytest.mark.parametrize("name", RGB_NAMES)
def test_contract_channels_stride_grid(name: str) -> None:
    ext = random_extractor(name)
    assert ext.modality == "rgb"
    assert ext.out_channels == sum(f.num_chs for f in ext.feature_info)
    assert ext.patch_stride == min(f.reduction for f in ext.feature_info)
    s = ext.patch_stride
    size = (3 * s, 5 * s)  # non-square, not 224 (small: ViT-B costs ~90 MFLOP per token)
    x = torch.randn(2, 3, *size)
    outs = ext(x)
    assert [k for k in outs] == [f.name for f in ext.feature_info]
    for info in ext.feature_info:
        assert outs[info.name].shape[:2] == (2, info.num_chs)
        assert outs[info.name].shape[-2] == -(-size[0] // info.reduction)
    pf = ext.patch_features(x)
    assert pf.features.shape == (2, ext.out_channels, 3, 5) == (2, ext.out_channels, *ext.grid_size(size))
    assert pf.features.dtype == torch.float32 and not pf.features.isnan().any()
    assert pf.valid.shape == (2, 3, 5) and bool(pf.valid.all())
    assert not pf.features.requires_grad


@pytest.mark.parametrize("name", RGB_NAMES)
def test_frozen_eval_and_batch_independent(name: str) -> None:
    ext = random_extractor(name)
    ext.train()
    assert not ext.training and not any(m.training for m in ext.modules())
    assert not any(p.requires_grad for p in ext.parameters())
    s = ext.patch_stride
    x = torch.randn(2, 3, 3 * s, 2 * s)
    batched = ext.patch_features(x).features
    single = ext.patch_features(x[1:]).features
    torch.testing.assert_close(batched[1:], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", RGB_NAMES)
def test_preprocess_uses_own_data_config(name: str, rng: np.random.Generator) -> None:
    ext = random_extractor(name)
    expected_mean = (0.5, 0.5, 0.5) if name.startswith("efficientnet") else IMAGENET_MEAN
    assert ext.mean == pytest.approx(expected_mean)
    img = np.full((31, 45, 3), 255, dtype=np.uint8)
    out = ext.preprocess(img, (16, 24))
    assert out.shape == (3, 16, 24)
    expected = (1.0 - torch.tensor(ext.mean)) / torch.tensor(ext.std)
    torch.testing.assert_close(out[:, 5, 7], expected)


def test_efficientnet_grid_for_sizes_not_multiple_of_stride() -> None:
    ext = random_extractor("efficientnet_lite0")
    pf = ext.patch_features(torch.randn(1, 3, 36, 53))
    assert pf.grid == ext.grid_size((36, 53)) == (4, 6)


def test_efficientnet_aggregation_is_local_3x3_average() -> None:
    ext = random_extractor("efficientnet_lite0")
    x = torch.randn(1, 3, 64, 64)
    maps = list(ext(x).values())
    up = torch.nn.functional.interpolate(maps[1], size=maps[0].shape[-2:], mode="bilinear")
    cat = torch.cat([maps[0], up], dim=1)
    feats = ext.patch_features(x).features
    torch.testing.assert_close(feats[0, :, 3, 4], cat[0, :, 2:5, 3:6].mean(dim=(1, 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[0, :, 0, 0], cat[0, :, :2, :2].mean(dim=(1, 2)), rtol=1e-4, atol=1e-5)


def test_lukemelas_rename_covers_every_timm_key() -> None:
    model = build_efficientnet_lite("efficientnet_lite0", pretrained=False)
    shipped = read_state_dict(shipped_lite_weights("efficientnet_lite0"))
    renamed = lukemelas_to_timm(shipped, model)
    own = model.state_dict()
    assert set(renamed) == set(own)
    assert all(renamed[k].shape == own[k].shape for k in own)
    assert torch.equal(renamed["blocks.1.0.conv_pwl.weight"], shipped["_blocks.1._project_conv.weight"])
    assert torch.equal(renamed["classifier.weight"], shipped["_fc.weight"])


def test_default_extractor_shipped_weights_classify_a_cat() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    ext = build_extractor(RGBFeatureConfig())
    classifier = build_efficientnet_lite("efficientnet_lite0")
    x = ext.preprocess(skimage_data.chelsea(), (224, 224)).unsqueeze(0)
    with torch.no_grad():
        top3 = classifier(x).topk(3).indices[0].tolist()
        first = classifier.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    assert any(281 <= c <= 285 for c in top3), top3  # ImageNet cat classes
    torch.testing.assert_close(ext(x)["blocks.2"], first)  # the extractor carries the same weights


def test_bad_weights_files_raise_model_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="garbage.pth"):
        build_extractor(RGBFeatureConfig(name="efficientnet_lite0", weights=bad))
    with pytest.raises(ModelFileError, match="not found"):
        build_extractor(RGBFeatureConfig(name="efficientnet_lite0", weights=tmp_path / "none.pth"))


def test_unknown_extractor_name_lists_known() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        build_extractor(RGBFeatureConfig(name="resnet_nope"))
