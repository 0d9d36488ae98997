"""Cross-modal distillation networks (method-spec §4.3-4.5).

Three designs map the main modality to the missing one, each built from widths and sizes given
as arguments:

* ``f2f`` :class:`FeatureToFeature`: patch-wise MLP, main features -> target features.
* ``f2i`` :class:`FeatureToInput`: conv decoder, main features -> target modality's raw input.
* ``i2f`` :class:`InputToFeature`: CNN, main modality's raw input -> target features.

Every network records its constructor arguments in ``init_kwargs`` (JSON-friendly) so that
:func:`cmdiad.distill.train.save_distiller` can rebuild it through :data:`DISTILLERS`. The
reference code's networks (``distill.architecture = "reference"``) live in
:mod:`cmdiad.distill.reference`; :func:`build_distiller` picks a class from the registry by
design and architecture, and each class sizes itself from :class:`DistillSides`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from cmdiad.config import DistillConfig
from cmdiad.distill.base import (  # noqa: F401  (DISTILLERS, OutputScale re-exported)
    DISTILLERS,
    Distiller,
    DistillSides,
    OutputScale,
    TargetBatches,
    per_patch,
    registry_name,
)
from cmdiad.types import MODALITIES


@DISTILLERS.register("f2f")
class FeatureToFeature(Distiller):
    """Patch-wise MLP from main-modality features to target-modality features (§4.3).

    LayerNorm(in) -> Linear(in, h) -> GELU -> Linear(h, h) -> GELU -> Linear(h, out) -> GELU,
    with ``h = int(in_channels * hidden_ratio)``. No spatial mixing.

    Args:
        in_channels: Main feature channels.
        out_channels: Target feature channels.
        hidden_ratio: Hidden width over input width (reference 2.5).
        final_activation: Keep the reference's final GELU (outputs >= about -0.17). Harmless
            for non-negative targets (FPFH); disable it for targets with large negative values.
        calibrated: End with a per-channel de-normalisation fitted to the training targets
            (see :class:`OutputScale`), so the MLP works at unit scale whatever the target
            extractor's magnitudes. Off in the reference design.
    """

    kind = "f2f"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_ratio: float = 2.5,
        final_activation: bool = True,
        calibrated: bool = False,
    ) -> None:
        super().__init__()
        self.init_kwargs = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "hidden_ratio": hidden_ratio,
            "final_activation": final_activation,
            "calibrated": calibrated,
        }
        self.out_scale = OutputScale(out_channels) if calibrated else None
        hidden = max(1, int(in_channels * hidden_ratio))
        layers: list[nn.Module] = [
            nn.LayerNorm(in_channels),
            nn.Linear(in_channels, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_channels),
        ]
        if final_activation:
            layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> FeatureToFeature:
        """Main features -> target features on the same grid (``f2f_parity``: reference output)."""
        return cls(sides.main_channels, sides.target_channels, cfg.hidden_ratio,
                   final_activation=cfg.f2f_parity, calibrated=not cfg.f2f_parity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features ``(B, in_channels, h, w)`` to ``(B, out_channels, h, w)``."""
        y = per_patch(self.mlp, x)
        return y if self.out_scale is None else self.out_scale(y)

    def calibrate(self, batches: TargetBatches) -> None:
        """Fit the output de-normalisation when ``calibrated`` (valid patches only)."""
        if self.out_scale is not None:
            self.out_scale.fit(batches)


def decode_xyz(output: torch.Tensor) -> torch.Tensor:
    """Organized point cloud from an xyz decoder output.

    Points whose validity probability is below 0.5 (logit < 0) become 0, the dataset's
    "no point" value, so the hallucinated cloud has a background (fix of §8 item 9).

    Args:
        output: ``(B, 4, H, W)``: 3 coordinates and a validity logit.

    Returns:
        ``(B, 3, H, W)`` coordinates, zero where invalid.
    """
    return output[:, :3] * (output[:, 3:4] >= 0).to(output.dtype)


def _pair(value: float | Iterable[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    a, b = value
    return float(a), float(b)


@DISTILLERS.register("f2i")
class FeatureToInput(Distiller):
    """Conv decoder from main-modality features to the target modality's input (§4.4).

    Per-patch LayerNorm (the reference creates but never applies it) -> Conv3x3 in->4w ->
    bicubic upsample to the input size -> Conv3x3 4w->w -> ReLU -> Conv3x3 w->n -> ReLU ->
    Conv3x3 -> out -> per-channel de-normalisation fitted to the training targets.
    ``n = max(w // 3, 2 * out_channels)``; ``width=96`` gives the reference widths 384/96/32.

    Args:
        in_channels: Main feature channels.
        out_channels: 3 for an RGB image; 4 for an organized point cloud (3 coordinates and a
            validity logit, see :func:`decode_xyz`).
        scale: Input pixels per feature cell, one value or ``(sy, sx)``; sets the output size
            ``round(h * sy), round(w * sx)`` when ``output_size`` is not given.
        width: Base channel width.
        output_size: Exact output ``(H, W)``; takes precedence over ``scale``.
        resolution: Fraction of the output size at which the refining convolutions run; the
            result is then bilinearly resized to the output size. 1.0 is the reference; 0.5
            costs a quarter of the compute (the CPU default).
    """

    kind = "f2i"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: float | tuple[float, float],
        width: int = 64,
        output_size: tuple[int, int] | None = None,
        resolution: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < resolution <= 1.0:
            raise ValueError(f"resolution must be in (0, 1], got {resolution}")
        self.resolution = float(resolution)
        self.scale = _pair(scale)
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.init_kwargs = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "scale": list(self.scale),
            "width": width,
            "output_size": None if self.output_size is None else list(self.output_size),
            "resolution": self.resolution,
        }
        self.target_is_xyz = out_channels == 4
        self.loss = "xyz_l2" if self.target_is_xyz else "pixel_l2"
        self.norm = nn.LayerNorm(in_channels)
        self.reduce = nn.Conv2d(in_channels, 4 * width, 3, padding=1)
        narrow = max(width // 3, 2 * out_channels)  # no ReLU bottleneck below the output width
        self.refine = nn.Sequential(
            nn.Conv2d(4 * width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, narrow, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(narrow, out_channels, 3, padding=1),
        )
        self.out_scale = OutputScale(out_channels, fitted=3 if self.target_is_xyz else None)

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> FeatureToInput:
        """Main features on the feature grid -> the target's input (xyz: with a validity channel)."""
        size = sides.target_image_size
        scale = (size[0] / sides.feature_grid[0], size[1] / sides.feature_grid[1])
        out = 4 if sides.target_modality == "xyz" else 3
        return cls(sides.main_channels, out, scale, cfg.width, output_size=tuple(size),
                   resolution=cfg.decoder_resolution)

    def target_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` for a feature grid ``(h, w)``."""
        if self.output_size is not None:
            return self.output_size
        return round(grid[0] * self.scale[0]), round(grid[1] * self.scale[1])

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Decode features ``(B, in_channels, h, w)`` to ``(B, out_channels, H, W)``.

        ``size`` overrides the output ``(H, W)``.
        """
        size = size or self.target_size((x.shape[2], x.shape[3]))
        work = (max(1, round(size[0] * self.resolution)), max(1, round(size[1] * self.resolution)))
        y = self.reduce(per_patch(self.norm, x))
        y = self.refine(F.interpolate(y, size=work, mode="bicubic", align_corners=False))
        if work != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.out_scale(y)

    def calibrate(self, batches: TargetBatches) -> None:
        """Fit the output de-normalisation (xyz: over points present in the target)."""
        self.out_scale.fit(batches, nonzero_valid=self.target_is_xyz)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """The hallucinated input ``(B, 3, H, W)``: an image, or a decoded point cloud."""
        out = self(x)
        return decode_xyz(out) if self.target_is_xyz else out


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) with a projected shortcut if needed."""

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out = 4 * planes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 4 * planes, H, W)``."""
        return F.relu(self.body(x) + self.shortcut(x))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def normalize_xyz(xyz: torch.Tensor) -> torch.Tensor:
    """Per-sample normalisation of organized point clouds, plus a validity channel.

    Valid points (any coordinate != 0) are centred on their mean and divided by their RMS
    distance to it, so raw scanner coordinates in any unit work; invalid points stay 0.

    Args:
        xyz: ``(B, 3, H, W)`` coordinates in dataset units, 0 where there is no point.

    Returns:
        ``(B, 4, H, W)``: normalised coordinates and the validity mask as 0/1.
    """
    valid = (xyz != 0).any(dim=1, keepdim=True).to(xyz.dtype)
    count = valid.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (xyz * valid).sum(dim=(2, 3), keepdim=True) / count
    centred = (xyz - mean) * valid
    spread = ((centred * centred).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt().clamp_min(1e-8)
    return torch.cat([centred / spread, valid], dim=1)


@DISTILLERS.register("i2f")
class InputToFeature(Distiller):
    """CNN from the main modality's raw input to target-modality features (§4.5).

    The reference "HRNet" is a single-resolution ResNet trunk; this is that trunk with the head
    fixed to read the trunk's real output width: stem Conv3x3 in->w, Conv3x3 w->2w (stride 2 on
    the first ``log2(stride)`` convs, extra stride-2 convs when ``stride > 4``), ``num_blocks``
    bottlenecks (planes 2w, out 8w), Conv1x1 8w->out, per-channel de-normalisation.
    ``width=64, num_blocks=12`` is the reference trunk (512 channels).

    Args:
        in_channels: Input channels (3 for an image or an organized point cloud).
        out_channels: Target feature channels.
        stride: Input pixels per target patch; a power of two. Output grid ``(H // s, W // s)``.
        width: Base channel width.
        num_blocks: Bottleneck blocks.
        input_is_xyz: Input is an organized point cloud in dataset units; normalised per
            sample by :func:`normalize_xyz` (which adds a validity channel).
    """

    kind = "i2f"
    feature_side = "target"  # it predicts the target extractor's patch grid
    lr_fields = {"xyz": "i2f_lr_main_xyz", "rgb": "i2f_lr_main_rgb"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        width: int = 64,
        num_blocks: int = 12,
        input_is_xyz: bool = False,
    ) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"stride must be a power of two, got {stride}")
        self.init_kwargs = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "stride": stride,
            "width": width,
            "num_blocks": num_blocks,
            "input_is_xyz": input_is_xyz,
        }
        self.stride = stride
        self.input_is_xyz = input_is_xyz
        self.stem = self._stem(in_channels + int(input_is_xyz), width, int(math.log2(stride)))
        blocks = [Bottleneck(2 * width if i == 0 else 8 * width, 2 * width) for i in range(num_blocks)]
        self.trunk = nn.Sequential(*blocks)
        trunk_out = 8 * width if num_blocks else 2 * width
        self.head = nn.Conv2d(trunk_out, out_channels, 1)
        self.out_scale = OutputScale(out_channels)

    @classmethod
    def build(cls, sides: DistillSides, cfg: DistillConfig) -> InputToFeature:
        """Main input -> target features on the feature grid (stride from the input size)."""
        stride = stride_between(sides.main_image_size, sides.feature_grid)
        return cls(3, sides.target_channels, stride, cfg.trunk_width, num_blocks=cfg.trunk_blocks,
                   input_is_xyz=sides.main_modality == "xyz")

    @staticmethod
    def _stem(cin: int, width: int, downs: int) -> nn.Sequential:
        layers = [_conv_bn_relu(cin, width, 2 if downs >= 1 else 1)]
        layers.append(_conv_bn_relu(width, 2 * width, 2 if downs >= 2 else 1))
        layers += [_conv_bn_relu(2 * width, 2 * width, 2) for _ in range(downs - 2)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs ``(B, in_channels, H, W)`` to ``(B, out_channels, H // stride, W // stride)``."""
        h, w = x.shape[2] // self.stride, x.shape[3] // self.stride
        if self.input_is_xyz:
            x = normalize_xyz(x)
        y = self.head(self.trunk(self.stem(x)))
        return self.out_scale(y[:, :, :h, :w])

    def calibrate(self, batches: TargetBatches) -> None:
        """Fit the output de-normalisation over valid target patches."""
        self.out_scale.fit(batches)


def stride_between(image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """The power-of-two stride ``s`` with ``image_size // s == grid`` on both axes."""
    s = 1
    while s <= max(image_size):
        if (image_size[0] // s, image_size[1] // s) == tuple(grid):
            return s
        s *= 2
    raise ValueError(f"no power-of-two stride maps image {tuple(image_size)} to grid {tuple(grid)}")


def feature_grid(kind: str, main_grid: tuple[int, int], target_grid: tuple[int, int], policy: str) -> tuple[int, int]:
    """The patch grid a distiller's feature side lives on.

    ``main``: F2F and F2I read the main grid (F2F targets are resampled to it) and I2F predicts
    the target grid. ``finer``: every design works on the finer of the two grids, the coarser
    features repeated onto it (the reference duplicates DINO's 28x28 map to Point-MAE's 56x56), so
    F2F/I2F hallucinated banks are on the finer grid too. The designs of
    :mod:`cmdiad.pipeline.mtfi` resample their data to it with :func:`cmdiad.features.base.to_grid`
    (nearest repetition when upsampling, valid-patch averages when downsampling).

    Args:
        kind: A registered design (``f2f``, ``f2i``, ``i2f``, ...); its network's ``feature_side``
            says which grid ``main`` means.
        main_grid: Main patch grid ``(h, w)``.
        target_grid: Target patch grid ``(h, w)``.
        policy: ``main`` or ``finer`` (``distill.grid``).

    Returns:
        ``(h, w)``.
    """
    if policy == "finer":
        return tuple(max(main_grid, target_grid, key=lambda g: g[0] * g[1]))
    if policy != "main":
        raise ValueError(f"unknown distill grid policy {policy!r}; known: main, finer")
    return tuple(target_grid) if DISTILLERS.get(registry_name(kind)).feature_side == "target" else tuple(main_grid)


def build_distiller(
    kind: str,
    *,
    main_modality: str,
    target_modality: str,
    main_channels: int,
    target_channels: int,
    main_grid: tuple[int, int],
    main_image_size: tuple[int, int],
    target_grid: tuple[int, int],
    target_image_size: tuple[int, int],
    cfg: DistillConfig,
) -> Distiller:
    """Build the network of ``kind`` for one direction, initialised under ``cfg.seed``.

    The caller describes both sides; ``cfg.architecture`` picks the class from
    :data:`DISTILLERS` and ``cfg.grid`` the feature grid ``G`` (:func:`feature_grid`). What to
    train it on (inputs -> targets, with the loss ``net.loss``):

    * ``f2f``: main features on ``G`` ``(N, main_channels, *G)`` -> target features on ``G``.
    * ``f2i``: main features on ``G`` -> the target modality's preprocessed input
      ``(N, 3, *target_image_size)`` (rgb: normalised image; xyz: organized cloud in dataset
      units). Use ``net.generate(x)`` at inference: it returns ``(B, 3, H, W)``, xyz decoded.
    * ``i2f``: the main modality's preprocessed input ``(N, 3, *main_image_size)`` -> target
      features on ``G``; ``main_image_size // G`` must be a power of two.

    Args:
        kind: ``f2f``, ``f2i`` or ``i2f``.
        main_modality: ``rgb`` or ``xyz`` (the one present at inference).
        target_modality: ``rgb`` or ``xyz`` (the one hallucinated).
        main_channels: Channels of the main extractor's patch features.
        target_channels: Channels of the target extractor's patch features.
        main_grid: Main patch grid ``(h, w)``.
        main_image_size: Main extractor's input ``(H, W)``.
        target_grid: Target patch grid ``(h, w)``.
        target_image_size: Target extractor's input ``(H, W)``.
        cfg: Architecture, grid policy, widths and seed.

    Returns:
        The network, in train mode, on the CPU.
    """
    for modality in (main_modality, target_modality):
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    cls = DISTILLERS.get(registry_name(kind, cfg.architecture))
    sides = DistillSides(main_modality, target_modality, main_channels, target_channels,
                         feature_grid(kind, main_grid, target_grid, cfg.grid),
                         tuple(main_image_size), tuple(target_image_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return cls.build(sides, cfg)
