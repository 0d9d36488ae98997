"""DINO / DINOv2 ViT extractors: last block after the final norm, as a patch grid.

Weights are never shipped nor downloaded: users give ``rgb.weights=PATH`` in one of the
formats they have: the original DINO ``.pth`` backbone state dict (timm's key names), a DINO
training checkpoint (``teacher``/``student`` with ``module.backbone.`` prefixes), timm/HF
``model.safetensors``, or DINOv2's official ``.pth`` (extra ``mask_token``, position embedding
for a 37x37 grid). Loading is strict; the position embedding is resampled to the model's grid,
and timm's dynamic image size resamples it again to each input's grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from cmdiad.errors import ConfigError
from cmdiad.features.base import FeatureInfo, register_family
from cmdiad.features.rgb import RGBExtractor, load_strict, read_state_dict
from cmdiad.types import PatchFeatures

logger = logging.getLogger(__name__)

_VITS = {
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
}
_WRAPPERS = ("teacher", "student", "model", "state_dict")
_DROPPED = ("mask_token",)  # DINOv2's masked-modelling token, unused at inference


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    """Take the backbone's flat state dict out of a training checkpoint."""
    for key in _WRAPPERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def convert_vit_state_dict(state: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a DINO / DINOv2 / timm ViT state dict to ``model``'s key names and pos-embed grid.

    Args:
        state: A checkpoint as read from disk (possibly wrapped, see the module docstring).
        model: The timm ``VisionTransformer`` to load into.

    Returns:
        A flat state dict; keys that still do not fit are left for strict loading to report.
    """
    out = {k: v for k, v in _unwrap(state).items() if k not in _DROPPED}
    pos = out.get("pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape != model.pos_embed.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
        )
    return out


class ViTExtractor(RGBExtractor):
    """Patch tokens of a timm ViT's last block (after the final norm) as ``(B, C, h, w)``.

    Class and register tokens are dropped. Any input whose sides are multiples of the
    patch size works: the position embedding is interpolated to the input's grid.

    Args:
        model: A timm ``VisionTransformer`` built with ``dynamic_img_size=True``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        patch = int(model.patch_embed.patch_size[0])
        self.feature_info = [FeatureInfo("tokens", int(model.embed_dim), patch)]
        self.patch_stride = patch

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"tokens": (B, C, H // p, W // p)}`` for ``x`` ``(B, 3, H, W)``."""
        h, w = self.grid_size((int(x.shape[-2]), int(x.shape[-1])))
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens :]
        return {"tokens": tokens.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()}

    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        """Patch features ``(B, embed_dim, H // p, W // p)``, all valid."""
        with torch.no_grad():
            feats = self.forward(x.to(self.device))["tokens"].float()
        valid = torch.ones(feats.shape[0], *feats.shape[2:], dtype=torch.bool, device=feats.device)
        return PatchFeatures(feats, valid)


def build_vit(name: str, weights: Path | None, pretrained: bool = True) -> nn.Module:
    """A frozen timm ViT for ``name`` (``dino_vitb8``, ``dino_vits8``, ``dinov2_vitb14``).

    Args:
        name: Registered extractor name.
        weights: Weights file; required when ``pretrained``.
        pretrained: False keeps a random init (tests and benchmarks only).

    Raises:
        ConfigError: ``pretrained`` without ``weights``.
        ModelFileError: The weights file is missing, unreadable or does not fit.
    """
    if weights is None and pretrained:
        raise ConfigError(
            f"{name}: DINO weights must be given with rgb.weights=PATH (they are not shipped and "
            "never downloaded; e.g. dino_vitbase8_pretrain.pth or a timm model.safetensors)"
        )
    # timm's ViT init takes seconds for ViT-B; layers keep PyTorch's default random init instead
    # (loaded weights overwrite every tensor anyway) and only the tokens get timm's N(0, 0.02).
    model = timm.create_model(
        _VITS[name], pretrained=False, num_classes=0, dynamic_img_size=True, weight_init="skip"
    )
    for token in (model.cls_token, model.pos_embed, getattr(model, "reg_token", None)):
        if token is not None:
            nn.init.trunc_normal_(token, std=0.02)
    if weights is not None:
        load_strict(model, convert_vit_state_dict(read_state_dict(Path(weights)), model), weights)
        logger.info("loaded %s weights from %s", name, weights)
    return model


register_family(_VITS, lambda name, cfg: ViTExtractor(build_vit(name, cfg.weights, cfg.pretrained)))
