"""Training loop and persistence of the distillation networks (method-spec §4.6).

Plain torch: Adam without weight decay, per-iteration linear warm-up then a constant learning
rate, seeded shuffling and a seeded held-out split of samples for a validation loss
(``val_fraction = 0`` trains on every sample, as the reference).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cmdiad.config import DistillConfig, replace
from cmdiad.distill.networks import DISTILLERS, Distiller, registry_name
from cmdiad.errors import ModelFileError
from cmdiad.io.meta import read_meta

logger = logging.getLogger(__name__)

FORMAT = "cmdiad.distiller"
FORMAT_VERSION = 1
WEIGHTS_FILE = "distiller.safetensors"
META_FILE = "distiller.json"

Progress = Callable[[int, float, "float | None"], None]


@dataclass(frozen=True)
class TrainReport:
    """What a training run did.

    Attributes:
        train_loss: Mean training loss per epoch.
        val_loss: Mean held-out loss per epoch; empty when no sample was held out.
        epochs: Epochs run.
        seconds: Wall time of the run.
        num_train: Training samples.
        num_val: Held-out samples.
    """

    train_loss: list[float]
    val_loss: list[float]
    epochs: int
    seconds: float
    num_train: int = 0
    num_val: int = 0


def patch_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean distance per position (patch or pixel) between ``pred`` and ``target``.

    The reference sums the per-patch norms and divides by the batch size; the mean over valid
    positions keeps the loss, and so the learning rate, independent of the grid size.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        valid: ``(B, H, W)`` bool; positions that count (all when ``None``).

    Returns:
        Scalar; 0 when nothing is valid.
    """
    dist = torch.linalg.vector_norm(pred - target, dim=1)
    if valid is None:
        return dist.mean()
    weight = valid.to(dist.dtype)
    return (dist * weight).sum() / weight.sum().clamp_min(1.0)


def xyz_l2(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, bce_weight: float = 1.0
) -> torch.Tensor:
    """Loss of a hallucinated organized point cloud.

    ``coord + bce_weight * bce``: ``coord`` is the mean Euclidean coordinate error over pixels
    with a target point (any coordinate != 0), divided by the batch's RMS distance of target
    points to their own cloud's centroid, so that it is unit-free (scanner units vary) and
    comparable to ``bce``, the binary cross-entropy of the validity logit against "has a point"
    on all pixels. The divisor is pooled over the batch so that a cloud with a single point
    does not blow it up (and is 1 when no cloud has two points).

    Args:
        pred: ``(B, 4, H, W)`` coordinates and validity logit.
        target: ``(B, 3, H, W)`` coordinates, 0 where there is no point.
        valid: ``(B, H, W)`` bool; pixels that count (all when ``None``).
        bce_weight: Weight of the validity term.

    Returns:
        Scalar.
    """
    has_point = (target != 0).any(dim=1)
    mask = has_point if valid is None else has_point & valid
    m = mask.unsqueeze(1).to(target.dtype)
    count = m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    centred = (target - (target * m).sum(dim=(2, 3), keepdim=True) / count) * m
    spread = ((centred * centred).sum() / mask.sum().clamp_min(1)).sqrt()
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))  # all clouds of <= 1 point
    dist = torch.linalg.vector_norm(pred[:, :3] - target, dim=1) / spread
    coord = (dist * mask).sum() / mask.sum().clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(pred[:, 3], has_point.to(pred.dtype), reduction="none")
    bce = bce.mean() if valid is None else (bce * valid).sum() / valid.sum().clamp_min(1)
    return coord + bce_weight * bce


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "patch_l2": patch_l2,
    "pixel_l2": patch_l2,
    "xyz_l2": xyz_l2,
}
"""Loss functions by name: ``(pred, target, valid | None) -> scalar``."""


def warmup_lr(step: int, steps_per_epoch: int, cfg: DistillConfig) -> float:
    """Learning rate of optimisation step ``step`` (0-based).

    Linear warm-up over ``cfg.warmup_epochs`` epochs, then constant ``cfg.lr``. Step ``k`` of the
    warm-up uses ``lr * (k + 1) / warmup_steps``, or ``lr * k / warmup_steps`` with
    ``cfg.warmup_from_zero`` (the reference: its first step runs at lr 0).
    """
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step >= warmup_steps:
        return cfg.lr
    return cfg.lr * (step + (0 if cfg.warmup_from_zero else 1)) / warmup_steps


def design_config(cfg: DistillConfig, kind: str, main_modality: str) -> DistillConfig:
    """``cfg`` with the learning rate of design ``kind`` for main ``main_modality``.

    A network class with ``lr_fields`` has its own rates where those fields are set: I2F's
    ``cfg.i2f_lr_main_xyz`` / ``cfg.i2f_lr_main_rgb`` (the reference trains I2F at 3e-4 with xyz
    main and 2e-4 with rgb main, F2F/F2I at 5e-4).
    """
    fields = DISTILLERS.get(registry_name(kind)).lr_fields or {}
    lr = getattr(cfg, fields[main_modality]) if main_modality in fields else None
    return cfg if lr is None else replace(cfg, lr=lr)


def split_indices(
    n: int, val_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``n`` samples into training and held-out indices.

    ``round(n * val_fraction)`` samples are held out, at least 1 when ``n >= 5`` and
    ``val_fraction > 0``, none when ``n < 5``, and never all of them.

    Returns:
        ``(train (n - k,), val (k,))`` int64 index tensors, each sorted.
    """
    k = 0
    if n >= 5 and val_fraction > 0:
        k = min(max(1, round(n * val_fraction)), n - 1)
    perm = torch.randperm(n, generator=generator)
    return perm[k:].sort().values, perm[:k].sort().values


def _summed_over_positions(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss_fn`` times the positions per sample: the reference's per-sample sum, batch mean."""

    def summed(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return loss_fn(pred, target, valid) * (target.shape[-2] * target.shape[-1])

    return summed


def _batches(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    chunks = list(order.split(batch_size))
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


def _take(x: torch.Tensor | None, idx: torch.Tensor, device: torch.device | str) -> torch.Tensor | None:
    if x is None:
        return None
    out = x[idx].to(device)
    return out if out.dtype == torch.bool else out.float()


def _target_chunks(
    targets: torch.Tensor, valid: torch.Tensor | None, idx: torch.Tensor, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for chunk in idx.split(size):
        yield targets[chunk], None if valid is None else valid[chunk]


@torch.no_grad()
def _evaluate(net: nn.Module, data: tuple, idx: torch.Tensor, loss_fn: Callable, cfg: DistillConfig, device):
    inputs, targets, valid = data
    net.eval()
    total = 0.0
    for chunk in idx.split(cfg.batch_size):
        pred = net(_take(inputs, chunk, device))
        total += float(loss_fn(pred, _take(targets, chunk, device), _take(valid, chunk, device))) * len(chunk)
    net.train()
    return total / len(idx)


def _train_epoch(net, opt, data, batches, loss_fn, first_step, cfg, device) -> float:
    inputs, targets, valid = data
    total, count = 0.0, 0
    for i, chunk in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = warmup_lr(first_step + i, len(batches), cfg)
        loss = loss_fn(
            net(_take(inputs, chunk, device)), _take(targets, chunk, device), _take(valid, chunk, device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(chunk)
        count += len(chunk)
    return total / count


def fit_distiller(
    net: Distiller,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str | None = None,
    cfg: DistillConfig,
    device: torch.device | str,
    valid: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train ``net`` to map ``inputs`` to ``targets``.

    A seeded ``cfg.val_fraction`` of the samples is held out for a per-epoch validation loss
    (no model selection). Before the first step the network calibrates its output statistics
    on the training targets (:meth:`Distiller.calibrate`). With ``cfg.masked_loss`` off, ``valid``
    is ignored and every position counts (the reference). Batches are shuffled with a
    ``torch.Generator`` seeded by ``cfg.seed``; an incomplete last batch is dropped only when an
    epoch has more than one batch. Tensors may stay on the CPU (and in float16): batches move
    to ``device`` as float32.

    Args:
        net: A network from :func:`cmdiad.distill.networks.build_distiller`.
        inputs: ``(N, ...)`` network inputs.
        targets: ``(N, ...)`` what ``net(inputs)`` should give.
        loss: ``patch_l2``, ``pixel_l2`` or ``xyz_l2`` (see :data:`LOSSES`); default ``net.loss``.
            A loss other than the network's own raises (an xyz loss needs a validity channel).
        cfg: Epochs, batch size, lr, warm-up, held-out fraction, seed.
        device: Where to train.
        valid: ``(N, H, W)`` bool positions of ``targets`` that count in the loss.
        progress: Called after each epoch with ``(epoch, train_loss, val_loss or None)``.

    Returns:
        Per-epoch losses. ``net`` stays on ``device``, in eval mode.
    """
    loss = net.loss if loss is None else loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if LOSSES[loss] is not LOSSES[net.loss]:
        raise ValueError(f"{type(net).__name__} trains with loss {net.loss!r}, not {loss!r} (use net.loss)")
    valid = valid if cfg.masked_loss else None
    loss_fn = _summed_over_positions(LOSSES[loss]) if cfg.loss_sum_over_positions else LOSSES[loss]
    n = len(inputs)
    if n == 0 or len(targets) != n or (valid is not None and len(valid) != n):
        raise ValueError(f"need matching non-empty inputs/targets/valid, got {n}/{len(targets)}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = split_indices(n, cfg.val_fraction, gen)
    net.calibrate(_target_chunks(targets, valid, train_idx, cfg.batch_size))
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    data = (inputs, targets, valid)
    train_loss, val_loss, step = [], [], 0
    for epoch in range(cfg.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        batches = _batches(order, cfg.batch_size, drop_last=True)
        train_loss.append(_train_epoch(net, opt, data, batches, loss_fn, step, cfg, device))
        step += len(batches)
        if len(val_idx):
            val_loss.append(_evaluate(net, data, val_idx, loss_fn, cfg, device))
        logger.info(
            "distill epoch %d/%d: train %.5f val %s", epoch + 1, cfg.epochs, train_loss[-1], val_loss[-1:]
        )
        if progress is not None:
            progress(epoch, train_loss[-1], val_loss[-1] if val_loss else None)
    net.eval()
    seconds = time.perf_counter() - start
    return TrainReport(train_loss, val_loss, cfg.epochs, seconds, len(train_idx), len(val_idx))


def network_meta(net: Distiller) -> dict:
    """What rebuilds ``net`` (without its weights): ``kind``, ``architecture``, constructor ``kwargs``."""
    return {"kind": net.kind, "architecture": net.architecture, "kwargs": net.init_kwargs}


def network_from_meta(meta: dict, where: Path | str) -> Distiller:
    """An untrained network of the registered kind and architecture that ``meta`` names.

    Raises:
        ModelFileError: On ``where``, when the kind is unknown or the arguments do not fit it.
    """
    if not isinstance(meta, dict):
        raise ModelFileError(where, f"distiller description must be an object, got {type(meta).__name__}")
    name = registry_name(str(meta.get("kind")), str(meta.get("architecture", "cmdiad")))
    if name not in DISTILLERS or not isinstance(meta.get("kwargs"), dict):
        raise ModelFileError(where, f"unknown distiller {name!r} or missing kwargs")
    try:
        return DISTILLERS.get(name)(**meta["kwargs"])
    except (TypeError, ValueError) as e:
        raise ModelFileError(where, f"invalid constructor arguments: {e}") from e


def save_distiller(net: Distiller, path_dir: Path | str) -> None:
    """Write ``distiller.safetensors`` (state dict) and ``distiller.json`` (kind, architecture, kwargs).

    Args:
        net: A registered network.
        path_dir: Folder, created if missing.
    """
    from safetensors.torch import save_file

    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path_dir / WEIGHTS_FILE))
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **network_meta(net)}
    (path_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def load_distiller(path_dir: Path | str, device: torch.device | str = "cpu") -> Distiller:
    """Rebuild a network written by :func:`save_distiller`, strictly.

    Args:
        path_dir: Folder holding ``distiller.json`` and ``distiller.safetensors``.
        device: Where to put it.

    Returns:
        The network on ``device``, in eval mode.

    Raises:
        ModelFileError: A file is missing, foreign, corrupted or does not match its metadata.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path_dir = Path(path_dir)
    meta_path, weights_path = path_dir / META_FILE, path_dir / WEIGHTS_FILE
    net = network_from_meta(read_meta(meta_path, FORMAT, FORMAT_VERSION, what="distiller"), meta_path)
    try:
        state = load_file(str(weights_path))
        net.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise ModelFileError(weights_path, f"cannot load distiller weights: {e}") from e
    return net.to(device).eval()
