"""Multi-modal training, few-modal inference: the distillation designs and their use.

The three designs (method-spec §4.3–4.5) differ only in what goes in and what comes out; each
is one :class:`Design` in :data:`DESIGNS`, and nothing outside this module branches on the kind:

| kind | input | output | hallucinated features |
|---|---|---|---|
| f2f | main features | target features on the feature grid | the output |
| f2i | main features | target *input* (image / organized cloud) | target extractor(output) |
| i2f | main input | target features on the feature grid | the output |

The feature grid ``G`` is :func:`cmdiad.distill.networks.feature_grid`'s (``distill.grid``):
the main grid for F2F/F2I and the target grid for I2F, or the finer of the two for all.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from cmdiad.config import DistillConfig, FusionConfig
from cmdiad.designs import DESIGNS as _DESIGNS
from cmdiad.distill.networks import build_distiller, feature_grid
from cmdiad.distill.reference import load_reference_checkpoint, reference_checkpoint_path
from cmdiad.distill.train import (
    TrainReport,
    design_config,
    fit_distiller,
    load_distiller,
    network_from_meta,
    network_meta,
    save_distiller,
)
from cmdiad.errors import ModelFileError
from cmdiad.features.base import FeatureExtractor, image_view, to_grid
from cmdiad.pipeline.streams import OTHER
from cmdiad.scoring.fusion import pixel_setting
from cmdiad.types import PatchFeatures

log = logging.getLogger(__name__)

HALLUCINATOR_FILE = "hallucinator.json"


@dataclass
class PairedData:
    """What a distiller sees of the paired training samples.

    Attributes:
        main_features: ``(N, Cm, hm, wm)`` main-modality patch features.
        main_inputs: ``(N, 3, H, W)`` main-modality model inputs (designs that read them).
        target_features: ``(N, Ct, ht, wt)`` real target-modality features.
        target_inputs: ``(N, 3, H, W)`` real target-modality inputs (designs that learn them).
    """

    main_features: PatchFeatures
    main_inputs: torch.Tensor | None
    target_features: PatchFeatures
    target_inputs: torch.Tensor | None


class Design:
    """One distillation design: what it is trained on and how it hallucinates.

    Attributes:
        kind: Registry name (``f2f``, ``f2i``, ``i2f``), also the method name.
        reads_main_inputs: It needs the main modality's preprocessed inputs, not only its
            features (training and inference).
        learns_target_inputs: It is trained to reproduce the target modality's inputs, and its
            output is re-encoded by the target extractor (which inference must then build).
    """

    kind = ""
    reads_main_inputs = False
    learns_target_inputs = False

    def training_data(
        self, data: PairedData, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(inputs, targets, valid)`` for :func:`~cmdiad.distill.train.fit_distiller`."""
        raise NotImplementedError

    def hallucinate(
        self, net: nn.Module, main: PatchFeatures, inputs: torch.Tensor | None,
        target_extractor: FeatureExtractor | None, grid: tuple[int, int] | None,
    ) -> PatchFeatures:
        """Target features of a batch (``grid`` None: the grid the network was trained on is the main one)."""
        raise NotImplementedError


DESIGNS = _DESIGNS
"""Design classes by kind (:data:`cmdiad.designs.DESIGNS`); :func:`design` returns an instance."""


def design(kind: str) -> Design:
    """The design registered as ``kind``."""
    return DESIGNS.get(kind)()


def earned_fusion_config(fusion: FusionConfig, fid: dict[str, float] | None) -> FusionConfig:
    """The fusion settings of a row whose hallucinated stream measured fidelity ``fid``
    (:func:`fidelity` on held-out parts; None when none had both modalities).

    Three bands of ``r2`` (docs/method.md, "An offset for hallucinated maps" and "A hallucinated
    map that carries nothing about the part"):

    - ``r2 > 0``: the hallucination explains the real target features better than their mean
      patch does, which a hallucination unrelated to the part cannot (its ``r2`` is
      ``-E|h - mean|^2 / Var <= 0``): ``pixel_offset`` is kept, so the map's moderate responses
      can win against the main sensor's good-pixel tail.
    - ``fidelity_floor < r2 <= 0`` (or unmeasured): the map enters the pixel maximum as it is
      (offset 0), where a map that carries nothing only adds one more good-part draw.
    - ``r2`` below ``fidelity_floor`` (-1: no closer to the part's real features than another good
      part's) by more than its own scatter over the held-out parts (``r2 + fidelity_floor_se *
      r2_se <= fidelity_floor``, ``r2_se`` the jackknife standard error; 0 when unmeasured): the
      map is left out of the pixels (``pixel_combine = "real"``); image scores keep it behind
      their gate. A map within its scatter of the floor stays in the maximum: leaving out a map
      that localises costs far more than keeping one more good-part draw.

    With ``pixel_weight_by_fidelity`` the map's ``pixel_weight`` is multiplied by ``r2`` clipped to
    [0, 1]; a weight of 0 leaves it out as the floor does.
    """
    fid = fid or {}
    r2 = fid.get("r2", float("nan"))
    se = fid.get("r2_se", float("nan"))
    bound = r2 + fusion.fidelity_floor_se * (se if math.isfinite(se) else 0.0)
    if bound <= fusion.fidelity_floor:
        log.info("hallucination r2 %.3f (jackknife se %.3f) on held-out parts, below %g: its map is left out "
                 "of the pixels", r2, se, fusion.fidelity_floor)
        return replace(fusion, pixel_combine="real", pixel_offset=0.0)
    if fusion.pixel_weight_by_fidelity:
        weight = fusion.pixel_weight * min(max(r2, 0.0), 1.0) if math.isfinite(r2) else fusion.pixel_weight
        log.info("hallucination r2 %.3f on held-out parts: its map weighs %.3f in the pixels", r2, weight)
        fusion = replace(fusion, pixel_weight=weight)
    if fusion.pixel_weight == 0:
        return replace(fusion, pixel_combine="real", pixel_offset=0.0)
    if fusion.pixel_offset == 0 or r2 > 0:
        return fusion
    log.info("hallucination r2 %s on held-out parts: no pixel_offset for its map", f"{r2:.3f}")
    return replace(fusion, pixel_offset=0.0)


K = TypeVar("K", bound=Hashable)

PIXEL_OFFSETS = (0.0, 0.5, 1.0)
"""Offsets of a hallucinated map under the pixel maximum that a fit tries on labelled parts."""


def pixel_fusion_candidates(fusion: FusionConfig) -> dict[str, FusionConfig]:
    """The ways an MTFI row's hallucinated anomaly map may enter the ``gated`` fuser's pixels,
    tried on labelled validation parts (``FusionConfig.labelled_choice``), by name, in order:
    left out (``pixel_combine = "real"``), then the maximum with the map raised by each of
    ``PIXEL_OFFSETS``. ``fusion`` (the fit's label-free setting) is one of them, or is added last;
    each is named by :func:`cmdiad.scoring.fusion.pixel_setting`.

    Why these: with the test labels, one such setting per row keeps an MTFI row's P-AUROC within
    0.01 of its better stream on all but 1 to 3 of about 85 informative (dataset, category, row,
    defect type) cases on three generated sets, against 6 to 9 for the label-free setting
    (``benchmarks/bench_mtfi_signal.py``); which one depends on the row and category.
    """
    tried = [replace(fusion, pixel_combine="real")]
    tried += [replace(fusion, pixel_combine="max", pixel_offset=o) for o in PIXEL_OFFSETS]
    out = {pixel_setting(c): c for c in tried}
    if fusion not in out.values():
        out[pixel_setting(fusion)] = fusion
    return out


def best_choice(scores: Mapping[K, float], default: K, margin: float = 0.0) -> K:
    """The key with the highest score to 3 decimals (the first of equals), unless it beats
    ``default`` by less than ``margin`` or not at all: then ``default``."""
    rounded = {k: round(v, 3) for k, v in scores.items()}
    best = max(rounded, key=rounded.__getitem__)
    gain = rounded[best] - rounded[default]
    return best if gain > 0 and gain >= margin - 1e-9 else default


def choose_pixel_fusion(p_auroc: Mapping[str, Mapping[str, float]], label_free: str) -> str:
    """The pixel fusion setting (a key of :func:`pixel_fusion_candidates`) to keep, from each
    setting's P-AUROC per defect type of the labelled validation parts (good pixels: the validation
    good parts): the best mean over defect types, ``label_free`` where it is as good to 3 decimals.

    Measured with one or two labelled parts per defect type, drawn from the test parts of three
    generated sets and scored on the others (``benchmarks/bench_mtfi_labelled.py``), this keeps
    more MTFI cases within 0.01 of the better stream than requiring a gain of 0.01 over the
    label-free setting, or choosing by the worst defect type instead of the mean.
    """
    mean = {name: sum(per.values()) / len(per) for name, per in p_auroc.items()}
    return best_choice(mean, label_free)


def _on(pf: PatchFeatures, grid: tuple[int, int] | None) -> PatchFeatures:
    return pf if grid is None else to_grid(pf, grid)


@DESIGNS.register("f2f")
class FeatureToFeatureDesign(Design):
    """Main features -> target features, patch by patch (both resampled to the feature grid)."""

    kind = "f2f"

    def training_data(self, data, grid):
        main, target = to_grid(data.main_features, grid), to_grid(data.target_features, grid)
        return main.features, target.features, main.valid & target.valid

    def hallucinate(self, net, main, inputs, target_extractor, grid):
        pf = _on(main, grid)
        dev = next(net.parameters()).device
        return PatchFeatures(net(pf.features.to(dev)), pf.valid.to(dev))


@DESIGNS.register("f2i")
class FeatureToInputDesign(Design):
    """Main features -> the target modality's input, re-encoded by the frozen target extractor."""

    kind = "f2i"
    learns_target_inputs = True

    def training_data(self, data, grid):
        if data.target_inputs is None:
            raise ValueError("f2i trains on the target modality's inputs")
        return to_grid(data.main_features, grid).features, data.target_inputs, None

    def hallucinate(self, net, main, inputs, target_extractor, grid):
        if target_extractor is None:
            raise ValueError("f2i needs the target modality's extractor to encode what it generates")
        dev = next(net.parameters()).device
        decoded = net.generate(_on(main, grid).features.to(dev))
        return target_extractor.image_view(target_extractor.patch_features(decoded.to(target_extractor.device)))


@DESIGNS.register("i2f")
class InputToFeatureDesign(Design):
    """The main modality's input -> target features on the feature grid."""

    kind = "i2f"
    reads_main_inputs = True

    def training_data(self, data, grid):
        if data.main_inputs is None:
            raise ValueError("i2f trains on the main modality's inputs")
        target = to_grid(data.target_features, grid)
        return data.main_inputs, target.features, target.valid

    def hallucinate(self, net, main, inputs, target_extractor, grid):
        if inputs is None:
            raise ValueError("i2f needs the main modality's inputs")
        dev = next(net.parameters()).device
        out = net(inputs.to(dev))
        return PatchFeatures(out, to_grid(main, (int(out.shape[2]), int(out.shape[3]))).valid.to(dev))


class Hallucinator(nn.Module):
    """A trained distiller plus what it needs to produce target-modality patch features.

    Args:
        kind: The design (``f2f``, ``f2i`` or ``i2f``).
        net: The distillation network.
        target: Target modality (``rgb`` or ``xyz``).
        target_extractor: Frozen extractor of the target modality (used by designs that
            generate inputs).
        grid: The feature grid the network was trained on; None for the main grid (models
            saved before the grid was recorded).
        main_view: Channels of the main features the network reads, the first ones: the image
            view of split features (:attr:`~cmdiad.features.base.FeatureExtractor.score_split`);
            None reads them all.
    """

    def __init__(self, kind: str, net: nn.Module, target: str, target_extractor: FeatureExtractor | None,
                 grid: tuple[int, int] | None = None, main_view: int | None = None) -> None:
        super().__init__()
        self.design = design(kind)
        self.kind, self.net, self.target = kind, net, target
        self.target_extractor = target_extractor
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.main_view = None if main_view is None else int(main_view)

    @property
    def target_extractor(self) -> FeatureExtractor | None:
        """The frozen target extractor; used, not owned: it is not a submodule, so it is in no ``state_dict``."""
        return self.__dict__["_target_extractor"]

    def __setattr__(self, name: str, value) -> None:  # noqa: ANN001 - nn.Module's signature
        if name == "target_extractor":  # nn.Module would register the extractor as a submodule
            self.__dict__["_target_extractor"] = value
        else:
            super().__setattr__(name, value)

    def meta(self) -> dict:
        """JSON-able description that, with ``state_dict``, rebuilds this hallucinator (:meth:`from_meta`)."""
        return {**self._description(), "network": network_meta(self.net)}

    def _description(self) -> dict:
        return {"kind": self.kind, "target": self.target, "grid": list(self.grid) if self.grid else None,
                "main_view": self.main_view}

    @classmethod
    def from_meta(cls, meta: dict, target_extractor: FeatureExtractor | None, where: Path) -> Hallucinator:
        """An untrained hallucinator shaped as ``meta`` says (weights come from a ``state_dict``).

        Raises:
            ModelFileError: On ``where``, when ``meta`` is malformed or names an unknown design.
        """
        try:
            kind, target, grid = meta["kind"], meta["target"], meta["grid"]
            net = network_from_meta(meta["network"], where)
            return cls(kind, net, target, target_extractor, None if grid is None else tuple(grid),
                       _main_view(meta.get("main_view")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(where, f"invalid distiller description ({type(exc).__name__}: {exc})") from exc

    @torch.no_grad()
    def forward(self, main_features: PatchFeatures, main_inputs: torch.Tensor | None) -> PatchFeatures:
        """Hallucinated target features for a batch.

        Args:
            main_features: ``(B, Cm, hm, wm)`` main-modality features.
            main_inputs: ``(B, 3, H, W)`` main-modality inputs (designs that read them).

        Returns:
            Target-modality patch features of the batch.
        """
        self.net.eval()
        main = image_view(main_features, self.main_view)
        return self.design.hallucinate(self.net, main, main_inputs, self.target_extractor, self.grid)

    def save(self, folder: Path) -> None:
        """The network (:func:`~cmdiad.distill.train.save_distiller`) plus its target and grid.

        This is the pooled distiller of an experiment (``<out>/distillers/<row>/``); a model folder
        holds its hallucinator in the detector's one ``state_dict`` instead.
        """
        save_distiller(self.net, folder)
        (Path(folder) / HALLUCINATOR_FILE).write_text(json.dumps(self._description(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, kind: str, target: str, target_extractor: FeatureExtractor | None, *,
             device: str | torch.device = "cpu") -> Hallucinator:
        """Rebuild a saved hallucinator; a folder without :data:`HALLUCINATOR_FILE` uses the main grid."""
        net = load_distiller(folder, device=device)
        grid, main_view = None, None
        meta_path = Path(folder) / HALLUCINATOR_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                grid, main_view = meta["grid"], _main_view(meta.get("main_view"))
                if meta["kind"] != kind or meta["target"] != target:
                    raise ModelFileError(meta_path, f"holds a {meta['kind']} distiller to {meta['target']}, "
                                                    f"not {kind} to {target}")
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelFileError(meta_path, f"corrupted hallucinator file ({exc})") from exc
        return cls(kind, net, target, target_extractor, grid, main_view)


def _main_view(value) -> int | None:  # noqa: ANN001 - JSON value
    """A saved ``main_view``: None (files written before split features existed) or a positive int."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"main_view must be a positive integer or null, got {value!r}")


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
    main_view: int | None = None,
) -> tuple[Hallucinator, TrainReport | None]:
    """Build and fit (or load from ``cfg.checkpoint``) the ``kind`` distiller on paired data.

    The distiller reads the image view of split main features (``main_view``, see
    :class:`Hallucinator`) and learns the image view of the target extractor's
    (:meth:`~cmdiad.features.base.FeatureExtractor.image_view`): the map view of split RGB
    features serves the real RGB bank's anomaly maps only.

    Returns:
        The trained hallucinator (eval mode) and its training report (None when loaded).
    """
    main_modality = OTHER[target]
    cfg = design_config(cfg, kind, main_modality)
    data = replace(data, main_features=image_view(data.main_features, main_view),
                   target_features=target_extractor.image_view(data.target_features))
    main, tgt = data.main_features, data.target_features
    grid = feature_grid(kind, main.grid, tgt.grid, cfg.grid)
    net = build_distiller(
        kind, main_modality=main_modality, target_modality=target, main_channels=main.features.shape[1],
        target_channels=tgt.features.shape[1], main_grid=main.grid, main_image_size=image_size,
        target_grid=tgt.grid, target_image_size=image_size, cfg=cfg,
    )  # fmt: skip
    hallucinator = Hallucinator(kind, net, target, target_extractor, grid, main_view)
    if cfg.checkpoint is not None:
        load_reference_checkpoint(net, reference_checkpoint_path(cfg.checkpoint, kind, main_modality))
        return hallucinator.to(device).eval(), None
    x, y, valid = hallucinator.design.training_data(data, grid)
    report = fit_distiller(net, x, y, cfg=cfg, device=device, valid=valid, progress=progress)
    log.info("%s %s distiller: final train loss %.4f", kind, target, report.train_loss[-1])
    return hallucinator, report


def fidelity(hallucinated: PatchFeatures, real: PatchFeatures) -> dict[str, float]:
    """How close hallucinated features are to the real ones, over patches valid in both.

    Args:
        hallucinated: ``(N, C, h, w)`` hallucinated target features.
        real: ``(N, C, h', w')`` real target features of the same samples (resampled to ``(h, w)``).

    Returns:
        ``cosine``: mean cosine similarity per patch; ``rel_l2``: ``||hallucinated - real|| / ||real||``
        over all valid patches; ``r2``: the fraction of the real features' variation around their
        mean patch that the hallucination explains, ``1 - ||hallucinated - real||^2 / ||real -
        mean||^2`` (1: exact; 0: no better than predicting the mean patch everywhere; negative:
        worse); ``r2_se``: the jackknife standard error of ``r2`` over the samples (each left out
        in turn; NaN with fewer than two samples), how far ``r2`` could move with other parts;
        ``patches``: how many patches were compared.
    """
    real = to_grid(real, hallucinated.grid)
    keep = hallucinated.valid & real.valid
    h = hallucinated.features.permute(0, 2, 3, 1)[keep].double()
    r = real.features.permute(0, 2, 3, 1)[keep].double()
    if h.shape[0] == 0:
        return {"cosine": float("nan"), "rel_l2": float("nan"), "r2": float("nan"), "r2_se": float("nan"),
                "patches": 0}
    cosine = torch.nn.functional.cosine_similarity(h, r, dim=1, eps=1e-12).mean()
    err = (h - r).square().sum()
    rel = err.sqrt() / r.norm().clamp_min(1e-12)
    r2 = 1.0 - err / (r - r.mean(dim=0)).square().sum().clamp_min(1e-24)
    sample = torch.arange(keep.shape[0], device=keep.device).view(-1, 1, 1).expand_as(keep)[keep]
    return {"cosine": float(cosine), "rel_l2": float(rel), "r2": float(r2), "r2_se": _jackknife_r2_se(h, r, sample),
            "patches": int(h.shape[0])}


def _jackknife_r2_se(h: torch.Tensor, r: torch.Tensor, sample: torch.Tensor) -> float:
    """Jackknife standard error of :func:`fidelity`'s ``r2`` over samples: ``r2`` again with each
    sample's patches left out (the mean patch recomputed too), from per-sample sums."""
    n = int(sample.max()) + 1
    count = r.new_zeros(n).index_add_(0, sample, torch.ones_like(sample, dtype=r.dtype))
    total = r.new_zeros(n, r.shape[1]).index_add_(0, sample, r)
    square = r.new_zeros(n).index_add_(0, sample, r.square().sum(dim=1))
    error = r.new_zeros(n).index_add_(0, sample, (h - r).square().sum(dim=1))
    seen = count > 0
    count, total, square, error = count[seen], total[seen], square[seen], error[seen]
    m = int(count.shape[0])
    if m < 2:
        return float("nan")
    rest = count.sum() - count
    spread = (square.sum() - square) - (total.sum(dim=0) - total).square().sum(dim=1) / rest
    loo = 1.0 - (error.sum() - error) / spread.clamp_min(1e-24)
    return float(((m - 1) / m * (loo - loo.mean()).square().sum()).sqrt())

