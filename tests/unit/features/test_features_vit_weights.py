"""Strict loading of user-supplied DINO / DINOv2 / timm ViT weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cmdiad.config import RGBFeatureConfig
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.features import build_extractor
from cmdiad.features.rgb import load_strict
from cmdiad.features.vit import ViTExtractor, convert_vit_state_dict

# Key names of the official DINO backbone checkpoints (dino_vit{small,base}{8,16}_pretrain.pth).
DINO_KEYS = [
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "blocks.0.norm1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.proj.bias",
    "blocks.0.mlp.fc2.weight",
    "blocks.11.norm2.bias",
    "norm.weight",
    "norm.bias",
]


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A random dino_vits8's state dict, an input and its patch features."""
    torch.manual_seed(1)
    ext = build_extractor(RGBFeatureConfig(name="dino_vits8", pretrained=False))
    x = torch.randn(2, 3, 32, 48)
    state = {k: v.clone() for k, v in ext.model.state_dict().items()}
    return state, x, ext.patch_features(x).features


def _features_from(path: Path, x: torch.Tensor) -> torch.Tensor:
    ext = build_extractor(RGBFeatureConfig(name="dino_vits8", weights=path))
    return ext.patch_features(x).features


def test_official_dino_pth_loads_strictly(reference, tmp_path: Path) -> None:
    state, x, expected = reference
    assert set(DINO_KEYS) <= set(state)  # the official names are timm's
    path = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(state, path)
    torch.testing.assert_close(_features_from(path, x), expected)


def test_timm_safetensors_loads_strictly(reference, tmp_path: Path) -> None:
    state, x, expected = reference
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.testing.assert_close(_features_from(path, x), expected)


def test_dino_training_checkpoint_teacher_is_unwrapped(reference, tmp_path: Path) -> None:
    state, x, expected = reference
    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(3, 1)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "epoch": 100}, path)
    torch.testing.assert_close(_features_from(path, x), expected)


def test_missing_key_is_named(reference, tmp_path: Path) -> None:
    state, _, _ = reference
    path = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "blocks.3.attn.qkv.bias"}, path)
    with pytest.raises(ModelFileError, match=r"missing keys: blocks\.3\.attn\.qkv\.bias") as err:
        _features_from(path, torch.zeros(1, 3, 8, 8))
    assert err.value.path == path


def test_extra_key_is_named(reference, tmp_path: Path) -> None:
    state, _, _ = reference
    path = tmp_path / "extra.safetensors"
    save_file({**state, "blocks.12.norm1.weight": torch.ones(384)}, str(path))
    with pytest.raises(ModelFileError, match=r"unexpected keys: blocks\.12\.norm1\.weight"):
        _features_from(path, torch.zeros(1, 3, 8, 8))


def test_wrong_shape_is_named(reference, tmp_path: Path) -> None:
    state, _, _ = reference
    path = tmp_path / "vitb8.pth"
    torch.save({**state, "norm.weight": torch.ones(768)}, path)
    with pytest.raises(ModelFileError, match=r"shape mismatch: norm\.weight \(768,\) != \(384,\)"):
        _features_from(path, torch.zeros(1, 3, 8, 8))


def test_pretrained_without_weights_says_how_to_give_them() -> None:
    with pytest.raises(ConfigError, match=r"rgb\.weights=PATH"):
        build_extractor(RGBFeatureConfig(name="dino_vitb8"))


def test_dinov2_official_format_with_518_grid_is_resampled() -> None:
    """DINOv2 .pth: timm names + ``mask_token`` + ``ls1.gamma``, pos_embed for 37x37 patches."""
    torch.manual_seed(2)
    kwargs = {"num_classes": 0, "dynamic_img_size": True, "weight_init": "skip"}
    official = timm.create_model("vit_small_patch14_dinov2", img_size=518, **kwargs).eval()
    for token in (official.pos_embed, official.cls_token):  # "skip" leaves them unset
        torch.nn.init.normal_(token, std=0.5)
    state = {**official.state_dict(), "mask_token": torch.zeros(1, 384)}
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384) and "blocks.0.ls1.gamma" in state
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        expected = ViTExtractor(official).patch_features(x).features

    same_grid = timm.create_model("vit_small_patch14_dinov2", img_size=518, **kwargs)
    load_strict(same_grid, convert_vit_state_dict(dict(state), same_grid), "dinov2.pth")
    torch.testing.assert_close(ViTExtractor(same_grid).patch_features(x).features, expected)

    small_grid = timm.create_model("vit_small_patch14_dinov2", img_size=224, **kwargs)
    load_strict(small_grid, convert_vit_state_dict(dict(state), small_grid), "dinov2.pth")
    assert small_grid.pos_embed.shape == (1, 1 + 16 * 16, 384)
    feats = ViTExtractor(small_grid).patch_features(x).features
    assert feats.shape == expected.shape == (1, 384, 2, 3) and not feats.isnan().any()
