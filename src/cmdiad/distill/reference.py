"""The reference code's distillation networks and its checkpoint layout (``architecture = "reference"``).

The CMDIAD reference trains one network per design and direction and saves it with
``torch.save({"model": state_dict, "epoch": ..., "args": Namespace})``. The classes here rebuild
those networks with parameter names that map one-to-one onto that layout, so that the released
``MTFI_*.pth`` files load strictly (:func:`load_reference_checkpoint`):

* ``reference_f2f``: one direction of the two-direction F2F file (``{main}_norm``,
  ``{main}_mlp.mlp_module.0.fc1..fc3``): LayerNorm -> 3 Linear layers, each followed by GELU.
  The other direction's tensors in the same file are skipped.
* ``reference_f2i``: Conv3x3 in->4w, bicubic upsampling to the input size, Conv3x3 4w->w, ReLU,
  Conv3x3 w->w/3, ReLU, Conv3x3 ->3 (``conv1..conv4``). No validity channel (a hallucinated cloud
  has no background), no output scale. The file's ``norm`` LayerNorm is skipped: the reference
  builds it but never applies it.
* ``reference_i2f``: the reference "HRNet": stem Conv3x3 stride 2 -> BN -> ReLU -> Conv3x3
  stride 2 -> BN -> ReLU (``conv1``, ``bn1``, ``conv2``, ``bn2``), bottleneck stages
  ``layer1..layer3`` (4 blocks each, widths 2w -> 8w), ``final_layer`` Conv1x1. No input
  normalisation, no output scale. The file's ``layer4`` is skipped: built, never run.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cmdiad.config import DistillConfig
from cmdiad.distill.base import DISTILLERS, Distiller, DistillSides
from cmdiad.distill.networks import FeatureToFeature, stride_between
from cmdiad.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = {"f2f": "FtoF", "f2i": "FtoI", "i2f": "ItoF"}
"""Design part of the released file names ``MTFI_<design>_<PCs|RGB>.pth``."""
MAIN_NAMES = {"xyz": "PCs", "rgb": "RGB"}
"""Main-modality part of the released file names."""


class ReferenceLayout:
    """Mixin: how a network's parameters are named in the reference's state dicts.

    ``reference_keys`` maps every own state-dict key to its reference key (identity by default);
    reference keys starting with one of ``skipped_prefixes()`` belong to modules the reference
    builds but does not run for this direction, and are ignored.
    """

    def reference_keys(self) -> dict[str, str]:
        """Own key -> reference key, for every own state-dict entry."""
        return {k: k for k in self.state_dict()}  # type: ignore[attr-defined]

    def skipped_prefixes(self) -> tuple[str, ...]:
        """Reference key prefixes that are present in the files but unused here."""
        return ()


@DISTILLERS.register("reference_f2f")
class ReferenceFeatureToFeature(ReferenceLayout, FeatureToFeature):
    """The reference F2F direction whose main modality is ``main_modality`` (§4.3).

    Args:
        in_channels: Main feature channels.
        out_channels: Target feature channels.
        main_modality: ``xyz`` (the file's ``xyz_*`` half) or ``rgb`` (its ``rgb_*`` half).
        hidden_ratio: Hidden width over input width (reference 2.5).
    """

    architecture = "reference"

    def __init__(self, in_channels: int, out_channels: int, main_modality: str, hidden_ratio: float = 2.5) -> None:
        if main_modality not in MAIN_NAMES:
            raise ValueError(f"unknown main modality {main_modality!r}")
        super().__init__(in_channels, out_channels, hidden_ratio, final_activation=True, calibrated=False)
        self.main_modality = main_modality
        self.init_kwargs = {"in_channels": in_channels, "out_channels": out_channels,
                            "main_modality": main_modality, "hidden_ratio": hidden_ratio}

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> ReferenceFeatureToFeature:
        """Main features -> target features on the same grid."""
        return cls(sides.main_channels, sides.target_channels, sides.main_modality, cfg.hidden_ratio)

    def reference_keys(self) -> dict[str, str]:
        """``mlp.0`` = ``{main}_norm``; ``mlp.1/3/5`` = ``{main}_mlp.mlp_module.0.fc1/2/3``."""
        m = self.main_modality
        names = {"0": f"{m}_norm", "1": f"{m}_mlp.mlp_module.0.fc1", "3": f"{m}_mlp.mlp_module.0.fc2",
                 "5": f"{m}_mlp.mlp_module.0.fc3"}
        return {k: f"{names[k.split('.')[1]]}.{k.split('.')[2]}" for k in self.state_dict()}

    def skipped_prefixes(self) -> tuple[str, ...]:
        """The other direction of the two-direction file."""
        other = "rgb" if self.main_modality == "xyz" else "xyz"
        return (f"{other}_norm.", f"{other}_mlp.")


@DISTILLERS.register("reference_f2i")
class ReferenceFeatureToInput(ReferenceLayout, Distiller):
    """The reference F2I decoder: features -> the target's input, 3 channels (§4.4).

    Args:
        in_channels: Main feature channels.
        output_size: Output ``(H, W)``.
        width: Base width; the convolutions are ``in -> 4w -> w -> w // 3 -> 3`` (96: 384/96/32).
        out_channels: Output channels (3: an image or an organized cloud's coordinates).
    """

    kind = "f2i"
    architecture = "reference"
    loss = "pixel_l2"

    def __init__(self, in_channels: int, output_size: tuple[int, int], width: int = 96, out_channels: int = 3) -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.init_kwargs = {"in_channels": in_channels, "output_size": list(self.output_size), "width": width,
                            "out_channels": out_channels}
        narrow = max(1, width // 3)
        self.conv1 = nn.Conv2d(in_channels, 4 * width, 3, padding=1)
        self.conv2 = nn.Conv2d(4 * width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, narrow, 3, padding=1)
        self.conv4 = nn.Conv2d(narrow, out_channels, 3, padding=1)

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> ReferenceFeatureToInput:
        """Main features on the feature grid -> the target's input size."""
        return cls(sides.main_channels, sides.target_image_size, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode features ``(B, in_channels, h, w)`` to ``(B, out_channels, *output_size)``."""
        y = F.interpolate(self.conv1(x), size=self.output_size, mode="bicubic", align_corners=False)
        y = F.relu(self.conv2(y))
        return self.conv4(F.relu(self.conv3(y)))

    def skipped_prefixes(self) -> tuple[str, ...]:
        """The LayerNorm the reference creates and never applies."""
        return ("norm.",)


class ReferenceBottleneck(nn.Module):
    """ResNet bottleneck with the reference's names (``conv1..3``, ``bn1..3``, ``downsample``)."""

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out = 4 * planes
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 4 * planes, H, W)``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


@DISTILLERS.register("reference_i2f")
class ReferenceInputToFeature(ReferenceLayout, Distiller):
    """The reference I2F CNN ("HRNet" trunk): raw input -> target features (§4.5).

    Args:
        in_channels: Input channels (3).
        out_channels: Target feature channels.
        stride: Input pixels per output patch, a power of two; the reference's stem gives 4.
            Above 4 extra stride-2 convolutions follow the stem (``extra_stem``, not in the
            reference files).
        width: Stem width ``w`` (reference 64): stem ``w -> 2w``, bottlenecks ``2w -> 8w``.
        num_blocks: Bottleneck blocks run (reference 12 = ``layer1..layer3``).
        blocks_per_layer: Blocks per ``layerN`` stage (reference 4).
    """

    kind = "i2f"
    architecture = "reference"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 4, width: int = 64, num_blocks: int = 12,
                 blocks_per_layer: int = 4) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"stride must be a power of two, got {stride}")
        self.init_kwargs = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride,
                            "width": width, "num_blocks": num_blocks, "blocks_per_layer": blocks_per_layer}
        self.stride = stride
        downs = int(math.log2(stride))
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2 if downs >= 1 else 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2 if downs >= 2 else 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.extra_stem = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
            for _ in range(downs - 2)
        ))
        self.num_layers = math.ceil(num_blocks / blocks_per_layer)
        for i in range(self.num_layers):
            n = min(blocks_per_layer, num_blocks - i * blocks_per_layer)
            first = 2 * width if i == 0 else 8 * width
            blocks = [ReferenceBottleneck(first if j == 0 else 8 * width, 2 * width) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.final_layer = nn.Conv2d(8 * width if num_blocks else 2 * width, out_channels, 1)

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> ReferenceInputToFeature:
        """Main input -> target features on the feature grid."""
        stride = stride_between(sides.main_image_size, sides.feature_grid)
        return cls(3, sides.target_channels, stride, cfg.trunk_width, cfg.trunk_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs ``(B, in_channels, H, W)`` to ``(B, out_channels, H // stride, W // stride)``."""
        h, w = x.shape[2] // self.stride, x.shape[3] // self.stride
        y = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        y = self.extra_stem(y)
        for i in range(self.num_layers):
            y = getattr(self, f"layer{i + 1}")(y)
        return self.final_layer(y)[:, :, :h, :w]

    def skipped_prefixes(self) -> tuple[str, ...]:
        """The stage after the last one run (the reference builds ``layer4``, runs 1-3)."""
        return (f"layer{self.num_layers + 1}.",)


def reference_checkpoint_path(checkpoint: Path, kind: str, main_modality: str) -> Path:
    """The file of design ``kind`` with main ``main_modality`` under ``distill.checkpoint``.

    Args:
        checkpoint: A ``.pth`` file (used as is) or a folder holding the released files
            ``MTFI_{FtoF,FtoI,ItoF}_{PCs,RGB}.pth``.
        kind: ``f2f``, ``f2i`` or ``i2f``.
        main_modality: ``xyz`` (``PCs``) or ``rgb`` (``RGB``).

    Raises:
        ModelFileError: The file does not exist.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / f"MTFI_{CHECKPOINT_NAMES[kind]}_{MAIN_NAMES[main_modality]}.pth"
    if not path.is_file():
        raise ModelFileError(path, f"reference {kind} checkpoint (main {main_modality}) not found")
    return path


def read_reference_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference ``.pth``: ``{"model": state_dict, ...}`` or a bare state dict.

    Read with ``weights_only=True`` (the saved ``args`` Namespace is allowed, nothing else);
    a DataParallel ``module.`` prefix is stripped.

    Raises:
        ModelFileError: Unreadable, or no state dict inside.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(path, "reference checkpoint not found") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(path, f"not a readable PyTorch checkpoint ({exc})") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(path, "no state dict ('model' entry) in the checkpoint")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _layout_problems(net: ReferenceLayout, state: dict[str, torch.Tensor]) -> list[str]:
    own = net.state_dict()  # type: ignore[attr-defined]
    mapping = net.reference_keys()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    skipped = net.skipped_prefixes()
    missing = sorted(ref for k, ref in mapping.items() if ref not in state and k not in optional)
    known = set(mapping.values())
    unexpected = sorted(k for k in state if k not in known and not (skipped and k.startswith(skipped)))
    shapes = sorted(f"{ref} {tuple(state[ref].shape)} (expected {tuple(own[k].shape)})"
                    for k, ref in mapping.items() if ref in state and state[ref].shape != own[k].shape)
    labelled = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
    return [f"{label}: {', '.join(items)}" for label, items in labelled if items]


def load_reference_checkpoint(net: Distiller, path: Path | str) -> None:
    """Load a reference ``.pth`` into a reference network, strictly.

    Every parameter and buffer of ``net`` must be in the file under its reference name with the
    right shape (BatchNorm's ``num_batches_tracked`` counters may be absent), and every tensor of
    the file must be either mapped or one the reference builds without running for this
    direction (:meth:`ReferenceLayout.skipped_prefixes`).

    Args:
        net: A network built with ``distill.architecture = "reference"``.
        path: The checkpoint file.

    Raises:
        ConfigError: ``net`` is not a reference network.
        ModelFileError: Naming the missing, unexpected and mis-shaped keys.
    """
    if not isinstance(net, ReferenceLayout):
        raise ConfigError(f"{net.kind} network of architecture {net.architecture!r} cannot load a reference "
                          "checkpoint; set distill.architecture = 'reference'")
    path = Path(path)
    state = read_reference_state(path)
    problems = _layout_problems(net, state)
    if problems:
        raise ModelFileError(path, f"not a reference {net.kind} checkpoint for this network; " + "; ".join(problems))
    own = net.state_dict()
    mapped = {k: state[ref] if ref in state else own[k] for k, ref in net.reference_keys().items()}
    net.load_state_dict(mapped, strict=True)
    log.info("loaded reference %s weights (%d tensors) from %s", net.kind, len(mapped), path)
