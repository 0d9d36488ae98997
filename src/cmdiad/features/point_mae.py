"""Point-MAE encoder as M3DM/CMDIAD use it, projected onto the organized pixel grid.

Per sample (method-spec §2.2-2.3): the foreground points (all coordinates non-zero) are
grouped by farthest point sampling (``num_groups`` centres, start index 0) and kNN
(``group_size`` points, relative to their centre); a mini-PointNet embeds each group, a
12-block transformer with positional embeddings re-added before every block runs over the
groups, and the outputs of blocks 3 and 11 (0-based) go through the shared final LayerNorm
and are concatenated. Group features are interpolated back to every point (inverse squared
distance, 3 nearest centres), scattered onto the grid (background 0), averaged over 3x3
pixels and pooled to ``image_size // patch_stride``. Those four steps are linear, so they run
as one ``(patches, groups)`` matrix (:func:`patch_operator`, tested equal to the literal
steps) instead of materialising ``(C, N)`` and ``(C, H, W)`` tensors (~3x faster on CPU).

Deviations from the reference, all deliberate:

* The 3x3 average uses padding 1, so the grid stays aligned with the RGB and ground-truth
  grids; the reference uses padding 0 (a 1-pixel shift and shrink). ``average_padding = 0``
  restores it.
* A sample with fewer foreground points than ``num_groups`` (or ``group_size``) uses as many
  groups (points per group) as it has points; a sample without foreground points gives zero
  features and an all-invalid mask.
* Patches without any foreground pixel have zero features (the 3x3 average can leak a little
  into them in the reference) and are marked invalid.
* Samples are processed one at a time, which is what the reference's batch size 1 does, so
  train-mode BatchNorm statistics are per sample as there.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cmdiad.config import PointFeatureConfig
from cmdiad.errors import ConfigError, ModelFileError
from cmdiad.features.base import EXTRACTORS, FeatureInfo, PointCloudExtractor
from cmdiad.features.grouping import farthest_point_sample, interpolation_weights, knn_group
from cmdiad.preprocessing.organized import foreground_mask
from cmdiad.types import PatchFeatures

log = logging.getLogger(__name__)

TRANS_DIM = 384
"""Token width of the Point-MAE encoder (``encoder_dims`` equals it: no reduce layer)."""
DEPTH = 12
NUM_HEADS = 6
MLP_RATIO = 4.0
DROP_PATH_RATE = 0.1
POS_HIDDEN = 128
OUT_BLOCKS = (3, 11)
"""0-based blocks whose normalised outputs are concatenated (CMDIAD; M3DM used 3, 7, 11)."""


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias (checkpoint keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5 as Point-MAE
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer GELU MLP (checkpoint keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """The blocks (checkpoint prefix ``blocks.blocks.N``); drop-path rates linspace(0, max)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs ``(B, G, dim)`` of the blocks in ``keep``; ``pos`` is re-added before each block."""
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in keep:
                outs.append(x)
        return outs


def _conv_bn_relu_conv(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_mid, 1), nn.BatchNorm1d(c_mid), nn.ReLU(inplace=True), nn.Conv1d(c_mid, c_out, 1)
    )


class GroupEncoder(nn.Module):
    """Mini-PointNet: one token per point group (checkpoint keys ``first_conv``, ``second_conv``)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.first_conv = _conv_bn_relu_conv(3, 128, 256)
        self.second_conv = _conv_bn_relu_conv(512, 512, out_dim)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, G, out_dim)`` of neighbourhoods ``(B, G, S, 3)``."""
        b, g, s, _ = groups.shape
        local = self.first_conv(groups.reshape(b * g, s, 3).transpose(1, 2))  # (BG, 256, S)
        pooled = local.amax(dim=2, keepdim=True)
        # conv([pooled; local]) = W_pooled @ pooled + W_local @ local: the pooled half is
        # computed once per group instead of once per point (same result, half the FLOPs).
        conv, bn, relu, last = self.second_conv
        w = conv.weight.squeeze(-1)
        c = pooled.shape[1]
        per_group = torch.einsum("oc,bcx->box", w[:, :c], pooled)
        x = F.conv1d(local, w[:, c:].unsqueeze(-1), conv.bias) + per_group
        x = last(relu(bn(x)))
        return x.amax(dim=2).view(b, g, -1)


class PointMAEEncoder(nn.Module):
    """The ``MAE_encoder`` of Point-MAE: group tokens + positional embedding + transformer.

    Parameter names equal the official checkpoint's after stripping ``MAE_encoder.``.
    """

    def __init__(self, dim: int = TRANS_DIM, depth: int = DEPTH, num_heads: int = NUM_HEADS) -> None:
        super().__init__()
        self.encoder = GroupEncoder(dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, POS_HIDDEN), nn.GELU(), nn.Linear(POS_HIDDEN, dim))
        self.blocks = TransformerStack(dim, depth, num_heads, MLP_RATIO, DROP_PATH_RATE)
        self.norm = nn.LayerNorm(dim)
        self.out_blocks = tuple(i for i in OUT_BLOCKS if i < depth)
        self.apply(_init_weights)

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`forward`'s output."""
        return self.norm.normalized_shape[0] * len(self.out_blocks)

    def forward(self, groups: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Group features.

        Args:
            groups: ``(B, G, S, 3)`` neighbourhoods relative to their centre.
            centres: ``(B, G, 3)`` absolute centre coordinates.

        Returns:
            ``(B, out_channels, G)``.
        """
        outs = self.blocks(self.encoder(groups), self.pos_embed(centres), self.out_blocks)
        return torch.cat([self.norm(o) for o in outs], dim=-1).transpose(1, 2)


def _init_weights(m: nn.Module) -> None:
    """Point-MAE's initialisation (truncated normal 0.02), for random-init backbones."""
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def read_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``MAE_encoder`` tensors of an official Point-MAE checkpoint, prefix stripped.

    The file holds ``{"base_model": state_dict}`` with keys ``[module.]MAE_encoder.<name>``;
    decoder, mask token and every other key outside ``MAE_encoder`` are ignored.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(path, "Point-MAE checkpoint not found") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(path, f"not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("base_model"), dict):
        raise ModelFileError(path, "no 'base_model' state dict: not a Point-MAE pretraining checkpoint")
    prefix = "MAE_encoder."
    state = {}
    for key, value in ckpt["base_model"].items():
        key = key.removeprefix("module.")
        if key.startswith(prefix) and isinstance(value, torch.Tensor):
            state[key[len(prefix) :]] = value
    return state


def load_encoder_weights(model: PointMAEEncoder, path: Path) -> None:
    """Load the checkpoint's encoder into ``model`` strictly.

    Every encoder tensor must be present with the right shape and no unknown encoder key may
    appear (BatchNorm's ``num_batches_tracked`` counters are optional).

    Raises:
        ModelFileError: Naming the missing, unexpected or mis-shaped keys.
    """
    state = read_encoder_state(path)
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    problems = []
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing:
        problems.append("missing encoder keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected encoder keys: " + ", ".join(unexpected))
    if shapes:
        problems.append("wrong shapes: " + ", ".join(f"{k} {tuple(state[k].shape)}" for k in shapes))
    if problems:
        raise ModelFileError(path, "not a Point-MAE encoder checkpoint; " + "; ".join(problems))
    model.load_state_dict({**{k: own[k] for k in optional}, **state})
    log.info("loaded Point-MAE encoder (%d tensors) from %s", len(state), path)


class PointMAEExtractor(PointCloudExtractor):
    """Point-MAE patch features of organized point clouds.

    Args:
        cfg: Uses ``patch_stride``, ``num_groups``, ``group_size``, ``backbone_train_mode`` and
            ``average_padding`` (0: the reference's unpadded 3x3 average, a 1-pixel shift).
        backbone: The encoder; a random-initialised one when omitted.
    """

    def __init__(self, cfg: PointFeatureConfig, backbone: PointMAEEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else PointMAEEncoder()
        self.patch_stride = cfg.patch_stride
        self.feature_info = [FeatureInfo("xyz", self.backbone.out_channels, cfg.patch_stride)]
        self.eval()

    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        """Patch features ``(B, C, H // s, W // s)`` and validity of ``(B, 3, H, W)`` clouds."""
        grid = self.grid_size((x.shape[-2], x.shape[-1]))
        fg = foreground_mask(x)
        feats = torch.stack([self._sample_patches(x[i], fg[i], grid) for i in range(x.shape[0])])
        valid = F.adaptive_avg_pool2d(fg.unsqueeze(1).to(feats.dtype), grid).squeeze(1) > 0
        return PatchFeatures(feats * valid.unsqueeze(1), valid)

    def _sample_patches(self, xyz: torch.Tensor, fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(C, h, w)`` features of one ``(3, H, W)`` cloud with foreground ``(H, W)``."""
        flat = fg.flatten().nonzero().squeeze(1)
        if flat.numel() == 0:
            return xyz.new_zeros(self.out_channels, *grid)
        points = xyz.flatten(1)[:, flat].T.unsqueeze(0)  # (1, N, 3)
        centres, group_feats = self._group_features(points)
        idx, weights = interpolation_weights(points, centres)
        op = patch_operator(
            flat, (xyz.shape[1], xyz.shape[2]), grid, idx[0], weights[0], centres.shape[1], self.cfg.average_padding
        )
        return (op @ group_feats[0].T).T.reshape(-1, *grid)

    def _group_features(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres ``(1, G, 3)`` and their features ``(1, C, G)`` for ``(1, N, 3)`` points."""
        n = points.shape[1]
        num_groups, group_size = min(self.cfg.num_groups, n), min(self.cfg.group_size, n)
        if (num_groups, group_size) != (self.cfg.num_groups, self.cfg.group_size):
            log.debug("only %d foreground points: %d groups of %d", n, num_groups, group_size)
        centres = points[:, farthest_point_sample(points, num_groups)[0]]
        groups = points[:, knn_group(points, centres, group_size)[0]] - centres.unsqueeze(2)
        # Train-mode BatchNorm needs more than one value per channel.
        self.backbone.train(self.cfg.backbone_train_mode and num_groups * group_size > 1)
        try:
            return centres, self.backbone(groups, centres)
        finally:
            self.backbone.train(self.training)


def box_average_matrix(size: int, padding: int) -> torch.Tensor:
    """1-D factor ``(size + 2 padding - 2, size)`` of a 3x3 average with zero padding counted."""
    i = torch.arange(size + 2 * padding - 2).unsqueeze(1) - padding
    j = torch.arange(size).unsqueeze(0)
    return ((j >= i) & (j <= i + 2)).float() / 3


def adaptive_average_matrix(size: int, out: int) -> torch.Tensor:
    """1-D factor ``(out, size)`` of ``adaptive_avg_pool2d`` (PyTorch's window bounds)."""
    i = torch.arange(out).unsqueeze(1)
    start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
    j = torch.arange(size).unsqueeze(0)
    return ((j >= start) & (j < end)).float() / (end - start).float()


def _axis_entries(
    size: int, out: int, padding: int, coord: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel coordinate ``(N,)``: the patches it reaches along one axis and the weights."""
    g = adaptive_average_matrix(size + 2 * padding - 2, out) @ box_average_matrix(size, padding)
    values, rows = g.topk(int((g > 0).sum(0).max()), dim=0)  # only the non-zero band
    return rows.to(coord.device)[:, coord].T, values.to(coord.device)[:, coord].T


def patch_operator(
    flat: torch.Tensor,
    image: tuple[int, int],
    grid: tuple[int, int],
    idx: torch.Tensor,
    weights: torch.Tensor,
    num_centres: int,
    padding: int = 1,
) -> torch.Tensor:
    """The linear map from centre features to patch features, as a ``(h * w, G)`` matrix.

    Interpolating to the points, scattering onto the grid, the 3x3 average and the adaptive
    pooling are all linear and the two poolings are separable, so they compose into one small
    matrix; this never materialises the ``(C, N)`` point or ``(C, H, W)`` pixel features.

    Args:
        flat: ``(N,)`` row-major pixel index of every point.
        image: Grid ``(H, W)`` of the organized cloud.
        grid: Patch grid ``(h, w)``.
        idx: ``(N, kn)`` interpolation centres of every point.
        weights: ``(N, kn)`` their weights.
        num_centres: ``G``.
        padding: Of the 3x3 average (1 keeps the grid aligned, 0 is the reference's shift).
    """
    rows, row_w = _axis_entries(image[0], grid[0], padding, flat // image[1])
    cols, col_w = _axis_entries(image[1], grid[1], padding, flat % image[1])
    patch = rows.unsqueeze(2) * grid[1] + cols.unsqueeze(1)  # (N, mh, mw)
    value = (row_w.unsqueeze(2) * col_w.unsqueeze(1)).unsqueeze(1) * weights[:, :, None, None]
    target = patch.unsqueeze(1) * num_centres + idx[:, :, None, None]  # (N, kn, mh, mw)
    op = weights.new_zeros(grid[0] * grid[1] * num_centres)
    op.index_add_(0, target.flatten(), value.flatten())
    return op.view(grid[0] * grid[1], num_centres)


@EXTRACTORS.register("point_mae")
def build_point_mae(cfg: PointFeatureConfig) -> PointMAEExtractor:
    """Point-MAE extractor; loads ``cfg.weights`` (the official pretraining checkpoint)."""
    if cfg.pretrained and cfg.weights is None:
        raise ConfigError(
            "point_mae needs the Point-MAE pretraining checkpoint: set xyz.weights to the "
            "pretrain.pth file (or pretrained = false for a random-initialised backbone)"
        )
    backbone = PointMAEEncoder()
    if cfg.pretrained and cfg.weights is not None:
        load_encoder_weights(backbone, Path(cfg.weights))
    return PointMAEExtractor(cfg, backbone)
