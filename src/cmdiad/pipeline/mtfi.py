"""Multi-modal training, few-modal inference: training data for, and use of, a distiller.

The three designs (method-spec §4.3–4.5) differ only in what goes in and what comes out:

| kind | input | output | hallucinated features |
|---|---|---|---|
| f2f | main features | target features on the main grid | the output |
| f2i | main features | target *input* (image / organized cloud) | target extractor(output) |
| i2f | main input | target features on the target grid | the output |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from cmdiad.config import DistillConfig
from cmdiad.distill.networks import build_distiller, loss_name
from cmdiad.distill.train import TrainReport, fit_distiller
from cmdiad.features.base import FeatureExtractor, to_grid
from cmdiad.pipeline.streams import OTHER
from cmdiad.types import PatchFeatures

log = logging.getLogger(__name__)


@dataclass
class PairedData:
    """What a distiller sees of the paired training samples.

    Attributes:
        main_features: ``(N, Cm, hm, wm)`` main-modality patch features.
        main_inputs: ``(N, 3, H, W)`` main-modality model inputs (only for ``i2f``).
        target_features: ``(N, Ct, ht, wt)`` real target-modality features.
        target_inputs: ``(N, 3, H, W)`` real target-modality inputs (only for ``f2i``).
    """

    main_features: PatchFeatures
    main_inputs: torch.Tensor | None
    target_features: PatchFeatures
    target_inputs: torch.Tensor | None


class Hallucinator(nn.Module):
    """A trained distiller plus what it needs to produce target-modality patch features.

    Args:
        kind: ``f2f``, ``f2i`` or ``i2f``.
        net: The distillation network.
        target: Target modality (``rgb`` or ``xyz``).
        target_extractor: Frozen extractor of the target modality (used by ``f2i``).
    """

    def __init__(self, kind: str, net: nn.Module, target: str, target_extractor: FeatureExtractor) -> None:
        super().__init__()
        self.kind, self.net, self.target = kind, net, target
        self.target_extractor = target_extractor

    @torch.no_grad()
    def forward(self, main_features: PatchFeatures, main_inputs: torch.Tensor | None) -> PatchFeatures:
        """Hallucinated target features for a batch.

        Args:
            main_features: ``(B, Cm, hm, wm)`` main-modality features.
            main_inputs: ``(B, 3, H, W)`` main-modality inputs (required by ``i2f``).

        Returns:
            Target-modality patch features of the batch.
        """
        self.net.eval()
        dev = next(self.net.parameters()).device
        if self.kind == "f2f":
            out = self.net(main_features.features.to(dev))
            return PatchFeatures(out, main_features.valid.to(dev))
        if self.kind == "f2i":
            decoded = self.net.generate(main_features.features.to(dev))
            return self.target_extractor.patch_features(decoded.to(self.target_extractor.device))
        if main_inputs is None:
            raise ValueError("i2f needs the main modality's inputs")
        out = self.net(main_inputs.to(dev))
        grid = (int(out.shape[2]), int(out.shape[3]))
        return PatchFeatures(out, to_grid(main_features, grid).valid.to(dev))


def train_hallucinator(
    kind: str,
    data: PairedData,
    *,
    target: str,
    target_extractor: FeatureExtractor,
    image_size: tuple[int, int],
    cfg: DistillConfig,
    device: str | torch.device,
    progress=None,
) -> tuple[Hallucinator, TrainReport]:
    """Build and fit the ``kind`` distiller on paired training data.

    Returns:
        The trained hallucinator (eval mode) and its training report.
    """
    main, tgt = data.main_features, data.target_features
    net = build_distiller(
        kind,
        main_modality=OTHER[target],
        target_modality=target,
        main_channels=main.features.shape[1],
        target_channels=tgt.features.shape[1],
        main_grid=main.grid,
        main_image_size=image_size,
        target_grid=tgt.grid,
        target_image_size=image_size,
        cfg=cfg,
    )
    if kind == "f2f":
        aligned = to_grid(tgt, main.grid)
        x, y, valid, loss = main.features, aligned.features, aligned.valid & main.valid, "patch_l2"
    elif kind == "f2i":
        assert data.target_inputs is not None
        x, y, valid, loss = main.features, data.target_inputs, None, loss_name(kind, target)
    else:
        assert data.main_inputs is not None
        x, y, valid, loss = data.main_inputs, tgt.features, tgt.valid, "patch_l2"
    report = fit_distiller(net, x, y, loss=loss, cfg=cfg, device=device, valid=valid, progress=progress)
    log.info("%s %s distiller: final train loss %.4f", kind, target, report.train_loss[-1])
    return Hallucinator(kind, net, target, target_extractor), report


def fidelity(hallucinated: PatchFeatures, real: PatchFeatures) -> dict[str, float]:
    """How close hallucinated features are to the real ones, over patches valid in both.

    Args:
        hallucinated: ``(N, C, h, w)`` hallucinated target features.
        real: ``(N, C, h', w')`` real target features of the same samples (resampled to ``(h, w)``).

    Returns:
        ``cosine``: mean cosine similarity per patch; ``rel_l2``: ``||hallucinated - real|| / ||real||``
        over all valid patches; ``patches``: how many patches were compared.
    """
    real = to_grid(real, hallucinated.grid)
    keep = hallucinated.valid & real.valid
    h = hallucinated.features.permute(0, 2, 3, 1)[keep].double()
    r = real.features.permute(0, 2, 3, 1)[keep].double()
    if h.shape[0] == 0:
        return {"cosine": float("nan"), "rel_l2": float("nan"), "patches": 0}
    cosine = torch.nn.functional.cosine_similarity(h, r, dim=1, eps=1e-12).mean()
    rel = (h - r).norm() / r.norm().clamp_min(1e-12)
    return {"cosine": float(cosine), "rel_l2": float(rel), "patches": int(h.shape[0])}
