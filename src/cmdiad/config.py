"""Frozen dataclass configs, composed into :class:`DetectorConfig` and :class:`ExperimentConfig`.

Every component takes its own config. Loading is strict: an unknown key raises
:class:`~cmdiad.errors.ConfigError`. Only the CLI turns strings into configs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from cmdiad.designs import PAPER_DESIGNS, design_names
from cmdiad.errors import ConfigError

C = TypeVar("C")

BANK_METHODS = ("xyz", "rgb", "dual")
DISTILL_KINDS = PAPER_DESIGNS
METHODS = (*BANK_METHODS, *DISTILL_KINDS)
"""The paper's methods; a registered design (:func:`cmdiad.designs.design_names`) is a method too."""
DISTILL_ARCHITECTURES = ("cmdiad", "reference")
DISTILL_GRIDS = ("main", "finer")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig:
    """How samples are read and resized."""

    image_size: tuple[int, int] = (224, 224)
    """Model input size (H, W) for both modalities; masks are scored at this size too."""
    train_with_validation: bool = False
    """Add validation/good samples to the memory banks."""
    skip_bad_samples: bool = False
    """Warn and skip unreadable samples instead of raising."""
    paired_fraction: float = 1.0
    """Fraction of training samples that keep both modalities (partially paired experiments)."""
    feature_dtype: str = "float32"
    """Dtype the encoder keeps patch features in (its in-memory cache and the ``--cache`` files):
    ``float16`` halves their memory and disk use; banks, distillers and scoring still get float32."""

    def __post_init__(self) -> None:
        _check(len(self.image_size) == 2 and min(self.image_size) >= 8, "image_size must be (H, W) >= 8")
        _check(0.0 < self.paired_fraction <= 1.0, "paired_fraction must be in (0, 1]")
        _check(self.feature_dtype in ("float32", "float16"),
               f"unknown feature_dtype {self.feature_dtype!r}; use one of: float32, float16")


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing thresholds (cloud units, metres by default)."""

    border: int = 10
    """Width in pixels of the image border strips the background plane is fitted on."""
    ransac_distance: float = 0.004
    """RANSAC inlier distance of the plane fit."""
    ransac_n: int = 50
    """Points drawn per RANSAC hypothesis."""
    ransac_iterations: int = 1000
    """RANSAC hypotheses."""
    plane_distance: float = 0.005
    """Points closer than this to the plane are removed (xyz and rgb set to 0)."""
    min_border_points: int = 150
    """Fewer valid border points than this means the plane is already gone: skip the step."""
    cluster_eps: float = 0.006
    """DBSCAN neighbourhood radius."""
    cluster_min_points: int = 30
    """DBSCAN core-point neighbour count."""
    pad_multiple: int = 100
    """Height and width are rounded up to a multiple of this before padding to a square."""

    def __post_init__(self) -> None:
        if self.border < 1 or self.ransac_n < 3 or self.ransac_iterations < 1 or self.pad_multiple < 1:
            raise ValueError("border, pad_multiple, ransac_iterations must be >= 1 and ransac_n >= 3")
        if min(self.ransac_distance, self.plane_distance, self.cluster_eps) <= 0:
            raise ValueError("distances must be > 0")
        if self.min_border_points < self.ransac_n or self.cluster_min_points < 1:
            raise ValueError("min_border_points must be >= ransac_n and cluster_min_points >= 1")


@dataclass(frozen=True)
class RGBFeatureConfig:
    """The RGB feature extractor."""

    name: str = "efficientnet_lite0"
    """Registered extractor name (see ``cmdiad.features.EXTRACTORS``)."""
    weights: Path | None = None
    """Weights file for extractors whose weights users bring (DINO); None = shipped/none."""
    pretrained: bool = True
    """False builds a random-initialised backbone (tests only)."""
    aggregation: str = "upsample_first"
    """EfficientNet-Lite's 3x3 neighbourhood average: ``upsample_first`` (stages upsampled to the
    stride-8 grid, then averaged over in-image neighbours) or ``per_stage`` (PatchCore's order:
    each stage averaged on its own grid with zero padding counted, then upsampled; measured
    better pixel metrics, docs/method.md) or ``split`` (both: image scores from the
    ``upsample_first`` features, anomaly maps from the ``per_stage`` ones, one bank each)."""

    def __post_init__(self) -> None:
        _check(self.aggregation in ("upsample_first", "per_stage", "split"),
               f"unknown aggregation {self.aggregation!r}; use one of: upsample_first, per_stage, split")


@dataclass(frozen=True)
class PointFeatureConfig:
    """The point-cloud feature extractor."""

    name: str = "fpfh"
    """Registered extractor name: ``fpfh`` or ``point_mae``."""
    weights: Path | None = None
    """Point-MAE pretraining checkpoint; required for ``point_mae`` unless pretrained=False."""
    pretrained: bool = True
    """False builds a random-initialised backbone (tests only)."""
    patch_stride: int = 8
    """Input pixels per patch: the grid is image_size // patch_stride."""
    voxel_ratio: float = 0.01
    """FPFH: voxel size as a fraction of the object's bounding-box diagonal."""
    normal_radius_voxels: float = 2.0
    """FPFH: normal-estimation radius in voxels."""
    feature_radius_voxels: float = 5.0
    """FPFH: FPFH radius in voxels."""
    num_groups: int = 1024
    """Point-MAE: farthest-point-sampled group centres."""
    group_size: int = 128
    """Point-MAE: points per kNN group."""
    backbone_train_mode: bool = False
    """Point-MAE: run in train mode like the reference code (parity quirk)."""
    average_padding: int = 1
    """Point-MAE: zero padding of the 3x3 pixel average; 1 keeps the grid aligned, 0 is the
    reference's 1-pixel shift."""

    def __post_init__(self) -> None:
        _check(self.patch_stride >= 1, "patch_stride must be >= 1")
        _check(self.average_padding in (0, 1), "average_padding must be 0 or 1")
        _check(0 < self.voxel_ratio < 1, "voxel_ratio must be in (0, 1)")
        _check(self.num_groups >= 1 and self.group_size >= 1, "num_groups/group_size must be >= 1")


@dataclass(frozen=True)
class CoresetConfig:
    """Memory-bank subsampling."""

    ratio: float = 0.1
    """Fraction of patches kept (0, 1]; 1 keeps every patch."""
    sampler: str = "greedy"
    """``greedy`` (exact k-centre; pruned compiled loop on the CPU), ``greedy_reference`` (the same picks
    from the plain torch loop), ``approximate_greedy``, ``random`` or ``identity``."""
    projection_eps: float = 0.9
    """Johnson-Lindenstrauss eps for the random projection's dimension."""
    seed: int = 0
    """Seed of the projection and of random sampling."""

    def __post_init__(self) -> None:
        _check(0.0 < self.ratio <= 1.0, "coreset ratio must be in (0, 1]")
        _check(0.0 < self.projection_eps < 1.0, "projection_eps must be in (0, 1)")


@dataclass(frozen=True)
class MemoryConfig:
    """Memory banks and patch scoring."""

    coreset: CoresetConfig = field(default_factory=CoresetConfig)
    """Subsampling of each bank."""
    knn_backend: str = "torch"
    """Nearest-neighbour back-end: ``torch`` or ``faiss``."""
    faiss_index: str = "flat"
    """FAISS index: ``flat`` (exact), ``ivf`` or ``ivfpq`` (approximate)."""
    chunk_size: int = 4096
    """Query rows per distance chunk (bounds memory)."""
    standardize: str = "per_bank"
    """``per_bank`` (clean) or ``m3dm`` (PC-bank mean, RGB-bank std for every bank)."""
    reweight: bool = True
    """PatchCore's image-score re-weighting."""
    image_score: str = "patch_max"
    """What a bank reports as a sample's image score: ``patch_max`` (the maximum patch score,
    re-weighted when ``reweight``; PatchCore and the reference) or ``map_max`` (the maximum of the
    blurred anomaly map; with ``rgb.aggregation = "per_stage"`` it keeps more I-AUROC, docs/method.md
    "RGB patch aggregation")."""
    blur_sigma: float = 4.0
    """Gaussian sigma (pixels at image_size) of the anomaly-map blur."""
    blur_mode: str = "float"
    """``float`` (clean) or ``pil8bit`` (reference parity)."""
    keep_invalid_patches: bool = False
    """Keep patches without 3D points (zero vectors) in the xyz banks and coreset input, as the
    reference does; False excludes them."""

    def __post_init__(self) -> None:
        _check(self.knn_backend in ("torch", "faiss"),
               f"unknown knn_backend {self.knn_backend!r}; use one of: torch, faiss")
        _check(self.faiss_index in ("flat", "ivf", "ivfpq"),
               f"unknown faiss_index {self.faiss_index!r}; use one of: flat, ivf, ivfpq")
        _check(self.standardize in ("per_bank", "m3dm"),
               f"unknown standardize {self.standardize!r}; use one of: per_bank, m3dm")
        _check(self.blur_mode in ("float", "pil8bit"),
               f"unknown blur_mode {self.blur_mode!r}; use one of: float, pil8bit")
        _check(self.image_score in ("patch_max", "map_max"),
               f"unknown image_score {self.image_score!r}; use one of: patch_max, map_max")
        _check(self.chunk_size >= 1 and self.blur_sigma >= 0, "chunk_size >= 1 and blur_sigma >= 0")


@dataclass(frozen=True)
class FusionConfig:
    """Decision-layer fusion of per-stream scores."""

    kind: str = "ocsvm"
    """``ocsvm`` (M3DM's linear one-class SVM), ``sum`` (normalised sum), ``calibrated_max``
    (each stream calibrated on good samples, the maximum over streams) or ``gated`` (calibrated;
    the maximum over the real sensors plus each hallucinated stream's excess beyond its good range)."""
    rgb_weight: float = 0.1
    """Weight of the real RGB stream's scores before fusion."""
    xyz_weight: float = 1.0
    """Weight of the real xyz stream's scores before fusion."""
    hallucinated_weight: float = 1.0
    """Weight of the hallucinated stream's scores before fusion."""
    nu: float = 0.5
    """OCSVM nu."""
    max_iter: int = 1000
    """OCSVM SGD iterations."""
    seed: int = 42
    """OCSVM random state."""
    max_pixel_rows: int = 1_000_000
    """Pixel rows sampled to fit the pixel fuser (bounds memory)."""
    fit_on: str = "train"
    """Scores the fusers learn from: the ``train`` samples in their own banks (reference) or
    held-out ``validation`` good samples (falls back to training samples when there are none)."""

    image_calibration: str = "zscore_tail"
    """``calibrated_max`` and ``gated``, image scores: ``zscore`` (mean and std of the good samples'
    scores), ``zscore_tail`` (the mean, and the larger of that std and the spread that a part's
    maximum has given the tail of the same samples' pixel scores) or ``quantile`` (median, and the
    distance to ``calibration_quantile``)."""
    pixel_calibration: str = "quantile"
    """``calibrated_max``, anomaly-map pixels: ``zscore`` or ``quantile`` (aligns the streams' tails)."""
    calibration_quantile: float = 0.999
    """``quantile`` calibration: the good-sample quantile that maps to 1."""
    image_combine: str = "gated"
    """``gated`` fuser, image scores: ``gated`` (the real sensors' maximum plus the hallucinated
    streams' excess over ``image_gate``) or ``max`` (as ``calibrated_max``)."""
    pixel_combine: str = "max"
    """``gated`` fuser, anomaly-map pixels: ``gated``, ``max`` or ``real`` (the real sensors' maps
    only: a hallucinated map is left out; what a fit may choose from labelled parts,
    ``labelled_choice``)."""
    image_gate: float = 3.0
    """``gated``: calibrated image score above which a hallucinated stream counts (3 good-sample std),
    before ``gate_correction``."""
    pixel_gate: float = 1.0
    """``gated``: calibrated pixel score above which a hallucinated stream counts (1 = its good
    ``calibration_quantile``)."""

    pixel_offset: float = 0.5
    """``gated``, anomaly-map pixels: calibrated units added to a hallucinated stream's map before
    the streams are combined (its calibrated centre moves down by this many spreads), when its
    hallucination explains the real features of held-out parts (fidelity ``r2 > 0``); 0 otherwise."""
    pixel_weight: float = 1.0
    """``gated``, anomaly-map pixels: a hallucinated stream's calibrated map is multiplied by this
    before the streams are combined (after ``pixel_offset``); 0 leaves it out."""
    pixel_weight_by_fidelity: bool = False
    """``gated``, anomaly-map pixels of an MTFI row: the detector multiplies ``pixel_weight`` by the
    hallucination's fidelity ``r2`` on held-out parts, clipped to [0, 1] (the share of the real
    features' variance it explains), so a map with ``r2 <= 0`` is left out. On in the ``default``
    preset since the twenty-first session (docs/method.md, "The hallucinated map's weight")."""
    fidelity_floor: float = -1.0
    """``gated``, anomaly-map pixels of an MTFI row: a hallucinated map whose fidelity on held-out
    parts is below ``fidelity_floor`` by more than ``fidelity_floor_se`` jackknife standard errors
    (``r2 + fidelity_floor_se * r2_se <= fidelity_floor``) is left out (``pixel_combine =
    "real"``). At -1 the hallucination is no closer to a part's real features than another good
    part's features are: it carries nothing about that part. Image scores keep it behind their
    gate. Any value below the lowest r2 a hallucination shows (e.g. -1e9) keeps every map."""
    fidelity_floor_se: float = 2.0
    """How many jackknife standard errors of ``r2`` over the held-out parts (their scatter) ``r2``
    must lie below ``fidelity_floor`` for the map to be left out: a map whose ``r2`` is within
    that scatter of the floor stays in the pixel maximum. 0: the floor alone decides."""

    gate_correction: str = "student_t"
    """``gated``, ``zscore``-calibrated levels: ``student_t`` widens the gate to the prediction bound
    of a new good sample at the false-alarm rate ``image_gate`` std give for a known normal
    distribution, from the number of samples the calibration saw (6 samples: 6.5 for a gate of 3;
    20: 3.6; many: 3), or ``none``."""

    labelled_choice: bool = True
    """``gated`` fuser of an MTFI row, when the validation split holds labelled defective parts
    (``validation/<defect>/`` with masks): the fit tries the hallucinated map left out
    (``pixel_combine = "real"``) and raised by 0, 0.5 and 1 calibrated units under the maximum, and
    keeps the one with the best mean P-AUROC over those parts' defect types (good pixels: the
    validation good parts; ties go to the label-free setting). False: always the label-free setting."""
    calibration_folds: int = 0
    """``fit_on = "validation"``: the training parts are also scored, in this many folds, each
    against banks of the real sensors built without it, and those scores join the validation
    parts' in the image-level calibration of the real sensors (a few validation parts give a
    noisy spread); 0 (or fewer than this many training parts, or a row with one stream):
    validation parts only. Costs this many extra bank builds per real sensor."""

    def __post_init__(self) -> None:
        _check(self.kind in ("ocsvm", "sum", "calibrated_max", "gated"),
               f"unknown fusion kind {self.kind!r}; use one of: ocsvm, sum, calibrated_max, gated")
        _check(self.image_combine in ("gated", "max"),
               f"unknown image_combine {self.image_combine!r}; use gated or max")
        _check(self.pixel_combine in ("gated", "max", "real"),
               f"unknown pixel_combine {self.pixel_combine!r}; use gated, max or real")
        _check(self.image_gate >= 0 and self.pixel_gate >= 0, "image_gate and pixel_gate must be >= 0")
        _check(math.isfinite(self.pixel_offset), "pixel_offset must be a finite number")
        _check(math.isfinite(self.pixel_weight) and self.pixel_weight >= 0, "pixel_weight must be a finite number >= 0")
        _check(math.isfinite(self.fidelity_floor), "fidelity_floor must be a finite number")
        _check(math.isfinite(self.fidelity_floor_se) and self.fidelity_floor_se >= 0,
               "fidelity_floor_se must be a finite number >= 0")
        _check(self.gate_correction in ("student_t", "none"),
               f"unknown gate_correction {self.gate_correction!r}; use student_t or none")
        for what, mode in (("image", self.image_calibration), ("pixel", self.pixel_calibration)):
            modes = ("zscore", "zscore_tail", "quantile") if what == "image" else ("zscore", "quantile")
            _check(mode in modes, f"unknown {what}_calibration {mode!r}; use one of: {', '.join(modes)}")
        _check(0.5 < self.calibration_quantile < 1.0, "calibration_quantile must be in (0.5, 1)")
        _check(self.fit_on in ("validation", "train"),
               f"unknown fusion fit_on {self.fit_on!r}; use one of: validation, train")
        _check(0 < self.nu <= 1, "nu must be in (0, 1]")
        _check(self.calibration_folds == 0 or self.calibration_folds >= 2,
               f"calibration_folds must be 0 (off) or at least 2, got {self.calibration_folds}")


@dataclass(frozen=True)
class DistillConfig:
    """Cross-modal distillation network and its training."""

    epochs: int = 30
    """Training epochs."""
    batch_size: int = 8
    """Samples per step."""
    lr: float = 5e-4
    """Adam learning rate after warm-up."""
    warmup_epochs: int = 3
    """Linear warm-up length, then constant."""
    hidden_ratio: float = 2.5
    """F2F hidden width = ratio x input width."""
    f2f_parity: bool = False
    """F2F as the reference: final GELU, no output calibration (clean: calibrated, no GELU)."""
    width: int = 64
    """Base channel width of the F2I decoder (96 gives the reference 384/96/32)."""
    decoder_resolution: float = 0.5
    """F2I: fraction of the input size at which the decoder's convolutions run (reference 1.0)."""
    trunk_width: int = 32
    """Base channel width of the I2F CNN (64 gives the reference 512-channel trunk)."""
    trunk_blocks: int = 4
    """Residual bottleneck blocks of the I2F CNN (the reference trunk has 12)."""
    val_fraction: float = 0.1
    """Held-out fraction of training samples for validation loss (0: train on every sample)."""
    seed: int = 3407
    """Seed of initialisation, shuffling and the held-out split."""
    pooled: bool = False
    """Train one distiller per design and direction on the training samples of every category of
    an experiment (as the reference does), instead of one per category."""
    architecture: str = "cmdiad"
    """``cmdiad`` (networks of docs/method.md) or ``reference`` (the reference code's F2F/F2I/I2F,
    whose released checkpoints load through ``checkpoint``)."""
    grid: str = "main"
    """Patch grid of the distillers' feature side: ``main`` (F2F/F2I read the main grid, I2F
    predicts the target grid) or ``finer`` (all on the finer of the two grids, the coarser map
    repeated, as the reference's 56x56)."""
    i2f_lr_main_xyz: float | None = None
    """I2F learning rate when xyz is the main modality (None: ``lr``; reference 3e-4)."""
    i2f_lr_main_rgb: float | None = None
    """I2F learning rate when rgb is the main modality (None: ``lr``; reference 2e-4)."""
    masked_loss: bool = True
    """Distillation loss over valid positions only; False counts every position (reference)."""
    loss_sum_over_positions: bool = False
    """Sum the per-position loss over each sample's positions, as the reference (mean over the batch),
    instead of averaging it; under Adam only epsilon sees the scale, but the lr-free loss is easier to read."""
    warmup_from_zero: bool = False
    """Warm-up step k at ``lr * k / steps`` (reference: first step at 0) instead of ``(k + 1)``."""
    checkpoint: Path | None = None
    """Trained weights in the reference's ``.pth`` layout, loaded instead of training: a file, or a
    folder holding the released ``MTFI_{FtoF,FtoI,ItoF}_{PCs,RGB}.pth`` files."""

    def __post_init__(self) -> None:
        _check(self.architecture in DISTILL_ARCHITECTURES, f"unknown distill architecture {self.architecture!r}")
        _check(self.grid in DISTILL_GRIDS, f"unknown distill grid {self.grid!r}; known: {', '.join(DISTILL_GRIDS)}")
        for lr in (self.i2f_lr_main_xyz, self.i2f_lr_main_rgb):
            _check(lr is None or lr > 0, "i2f learning rates must be > 0")
        _check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        _check(self.lr > 0 and self.warmup_epochs >= 0, "lr > 0 and warmup_epochs >= 0")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        _check(0.0 < self.decoder_resolution <= 1.0, "decoder_resolution must be in (0, 1]")
        _check(self.width >= 1 and self.trunk_width >= 1 and self.trunk_blocks >= 0, "widths >= 1, blocks >= 0")


@dataclass(frozen=True)
class MetricsConfig:
    """Evaluation."""

    aupro_mode: str = "exact"
    """``exact`` (every threshold) or ``official100`` (the reference's 100 thresholds)."""
    round_per_class_digits: int | None = None
    """Round each category's metrics to this many decimals before the mean over categories, as the
    reference's tables do (3); None keeps exact values."""

    def __post_init__(self) -> None:
        _check(self.aupro_mode in ("exact", "official100"),
               f"unknown aupro_mode {self.aupro_mode!r}; use one of: exact, official100")
        digits = self.round_per_class_digits
        _check(digits is None or digits >= 0, "round_per_class_digits must be >= 0 or None")


@dataclass(frozen=True)
class DetectorConfig:
    """One detector: which method, which main modality, and its parts."""

    method: str = "dual"
    """``xyz``, ``rgb``, ``dual`` (banks only) or ``f2f``/``f2i``/``i2f`` (MTFI)."""
    main: str = "both"
    """Main modality: ``xyz``/``rgb`` for MTFI and single banks, ``both`` for dual."""
    data: DataConfig = field(default_factory=DataConfig)
    rgb: RGBFeatureConfig = field(default_factory=RGBFeatureConfig)
    xyz: PointFeatureConfig = field(default_factory=PointFeatureConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    """Global seed."""

    def __post_init__(self) -> None:
        known = (*BANK_METHODS, *design_names())
        _check(self.method in known, f"unknown method {self.method!r}; known: {', '.join(known)}")
        expected = {"xyz": ("xyz",), "rgb": ("rgb",), "dual": ("both",)}.get(self.method, ("xyz", "rgb"))
        _check(self.main in expected, f"method {self.method!r} needs main in {expected}, got {self.main!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The paper's experiment over categories and methods."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """Shared parts; method/main are set per row."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    categories: tuple[str, ...] = ()
    """Categories to run; empty = all found."""
    rows: tuple[str, ...] = ()
    """Rows as ``method_main`` (e.g. ``f2f_xyz``); empty = all nine."""
    device: str = "cpu"
    """Torch device for everything."""
    threshold_frr: float = 0.01
    """False-reject rate on validation good samples for the deployment threshold."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config (paths as strings, tuples as lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a leaf value; bool is never accepted as a number."""
    if tp is Path:
        return Path(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(tp)
    if expected is None:
        return value
    if not isinstance(value, expected) or (tp is not bool and isinstance(value, bool)):
        names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(f"{where}: expected {names[tp]}, got {value!r}")
    return float(value) if tp is float else value


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(elem, v, where) for v in value)
    return _coerce_scalar(tp, value, where)


def from_dict(cls: type[C], data: Any, where: str = "config") -> C:
    """Build ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        if Path(path).suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {Path(path).suffix.lstrip('.') or 'TOML'}: {exc}") from exc


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating tables on the way."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a table")
    node[keys[-1]] = value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def replace(cfg: C, **changes: Any) -> C:
    """``dataclasses.replace`` for configs."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
