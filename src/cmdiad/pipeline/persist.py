"""Saving and loading fitted detectors: one safetensors file + one JSON, never pickle.

Layout of a model folder (format version 2)::

    detector.json        format version, config, streams, image size, threshold (and the number
                         of samples that set it), heatmap calibration, and what rebuilds the core's
                         modules: bank shapes, the distiller's architecture, the fuser's kind
    model.safetensors    the DetectorCore's state_dict: banks.<stream>.bank/.standardisation,
                         hallucinator.net.*, fusion.*

Folders of format version 1 (``banks/<stream>/`` and ``distiller/`` folders beside
detector.json) are read and converted in memory (:mod:`cmdiad.pipeline.persist_v1`).

A model folder is always written whole: into a new folder beside the target that then
replaces it (:func:`write_model_folder`), so a refit never mixes files of two models.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from cmdiad.config import DetectorConfig, PointFeatureConfig, RGBFeatureConfig, from_dict, to_dict
from cmdiad.errors import CmdiadError, ConfigError, ModelFileError
from cmdiad.features import build_extractor
from cmdiad.features.base import FeatureExtractor
from cmdiad.features.cache import FeatureCache
from cmdiad.io.atomic import atomic_dir, atomic_write_text
from cmdiad.io.layout import check_model_target
from cmdiad.io.meta import read_meta, read_tensors
from cmdiad.memory.bank import empty_bank
from cmdiad.pipeline.core import DetectorCore, FusionState
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.encoder import Encoder
from cmdiad.pipeline.mtfi import DESIGNS, Hallucinator, design
from cmdiad.pipeline.streams import needed_modalities, streams_for

log = logging.getLogger(__name__)

FORMAT = "cmdiad-detector"
FORMAT_VERSION = 2
META_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"


def build_encoder(cfg: DetectorConfig, *, device: str | torch.device, cache: FeatureCache | None = None,
                  modalities: tuple[str, ...] = ("rgb", "xyz")) -> Encoder:
    """An encoder with the extractors of ``cfg`` for ``modalities``, on ``device``.

    Raises:
        ModelFileError: A weights file of an extractor cannot be read (named in the message).
    """
    configs = {"rgb": cfg.rgb, "xyz": cfg.xyz}
    configs = {m: configs[m] for m in modalities}
    extractors = {m: _build_extractor(c).to(device).eval() for m, c in configs.items()}
    return Encoder(extractors, configs, cfg.data, cache=cache)


def _build_extractor(cfg: RGBFeatureConfig | PointFeatureConfig) -> FeatureExtractor:
    """``build_extractor`` with every failure to read a weights file as one clear ModelFileError."""
    try:
        return build_extractor(cfg)
    except ModelFileError as exc:
        if "weights_only" not in exc.problem:
            raise
        # PyTorch's own message advises weights_only=False, i.e. running the file's code: never that.
        path, detail = exc.path, "PyTorch cannot load it as plain tensors"
    except CmdiadError:
        raise
    except Exception as exc:  # noqa: BLE001 - checkpoint readers fail in many ways on a foreign file
        if cfg.weights is None:
            raise
        path, detail = Path(cfg.weights), f"{type(exc).__name__}: {exc}"[:200]
    raise ModelFileError(path, f"not a weights file cmdiad can read for {cfg.name} ({detail}); expected a "
                         ".safetensors file or a PyTorch checkpoint of plain tensors") from None


def write_model_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` on a fresh folder that then replaces ``out`` as a whole.

    Raises:
        ModelFileError: ``out`` is a file, or a non-empty folder that is not a cmdiad model
            (it is left untouched).
    """
    out = Path(out)
    check_model_target(out)
    with atomic_dir(out) as tmp:
        write(tmp)
    log.info("wrote model folder %s", out)
    return out


def save_detector(det: Detector, out: Path) -> Path:
    """Write ``det`` to the folder ``out``, replacing a model that was there as a whole."""
    return write_model_folder(out, lambda folder: write_detector_files(det, folder))


def write_detector_files(det: Detector, out: Path) -> None:
    """Write ``model.safetensors`` and ``detector.json`` of ``det`` into ``out`` (an empty or new folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    core = det.core
    state = {k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(det.config),
        "streams": [s.name for s in core.streams],
        "image_size": list(core.image_size),
        "threshold": det.threshold,
        "threshold_samples": det.threshold_samples,
        "map_calibration": det.map_calibration,
        "banks": {name: bank.shape for name, bank in core.banks.items()},
        "hallucinator": core.hallucinator.meta() if core.hallucinator is not None else None,
        "fusion": core.fusion.meta(),
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))


def threshold_warning(samples: int | None, frr: float) -> str | None:
    """Advice when too few good samples set a threshold at false-reject rate ``frr``, else None.

    Below ``1 / frr`` samples the quantile is just the largest score; below ~20 it is noise anyway.
    """
    needed = max(20, math.ceil(1.0 / frr - 1e-9))
    if samples is None or samples >= needed:
        return None
    what = "simply their largest score" if samples * frr < 1 else "a rough estimate"
    return (f"the threshold was set by only {samples} good samples; at --frr {frr:g} it is {what}. Give at least "
            f"{needed} good validation samples (validation/good/), or a larger --frr, for a threshold you can trust")


def _read_meta(path: Path) -> dict:
    if not path.is_dir():
        raise ModelFileError(path, "not a model directory (it does not exist or is a file)")
    return read_meta(path / META_FILE, FORMAT, (1, FORMAT_VERSION), what="detector", version_key="format_version",
                     required=("config", "streams"))


def load_detector(path: Path, *, device: str | torch.device = "cpu", cache: FeatureCache | None = None) -> Detector:
    """Load a detector saved by :func:`save_detector` (or an older cmdiad); validates everything it reads.

    Raises:
        ModelFileError: Naming the file that is missing, foreign, corrupted or of a wrong type or shape.
    """
    path = Path(path)
    meta = _read_meta(path)
    meta_path = path / META_FILE
    try:
        cfg = from_dict(DetectorConfig, meta["config"], "detector.json:config")
    except (ConfigError, KeyError) as exc:
        raise ModelFileError(meta_path, f"invalid config: {exc}") from exc
    if meta.get("streams") != [s.name for s in streams_for(cfg)]:
        raise ModelFileError(meta_path, f"streams {meta.get('streams')} do not match the method")
    threshold, samples, calibration = _calibration_fields(meta, meta_path)
    if meta["format_version"] == 1:
        from cmdiad.pipeline.persist_v1 import convert

        meta, tensors = convert(path, meta, cfg)
        log.info("read %s, a model folder of format version 1 (save it again to write version 2)", path)
    else:
        tensors = read_tensors(path / WEIGHTS_FILE, missing="the model's weights (a format-2 folder has this file)")
    modalities = needed_modalities(cfg)
    if cfg.method in DESIGNS and design(cfg.method).learns_target_inputs:
        modalities = ("rgb", "xyz")  # the decoded input is re-encoded with the target extractor
    det = Detector(cfg, build_encoder(cfg, device=device, cache=cache, modalities=modalities), device=device)
    det.core = _core(cfg, det.encoder, meta, tensors, path)
    det.core.to(device)
    det.threshold, det.threshold_samples, det.map_calibration = threshold, samples, calibration
    _check_widths(det, path)
    return det


def _core(cfg: DetectorConfig, encoder: Encoder, meta: dict, tensors: dict[str, torch.Tensor],
          path: Path) -> DetectorCore:
    """The core shaped as ``meta`` describes, with ``tensors`` loaded strictly into it."""
    meta_path, weights = path / META_FILE, path / WEIGHTS_FILE
    if list(meta.get("image_size", encoder.image_size)) != list(encoder.image_size):
        raise ModelFileError(meta_path, f"image_size {meta.get('image_size')} does not match the config's "
                             f"{list(encoder.image_size)}")
    core = DetectorCore(cfg, encoder.image_size)
    _empty_banks(core, meta.get("banks"), meta_path)
    hall = core.hallucinated
    if hall is not None:
        if not isinstance(meta.get("hallucinator"), dict):
            raise ModelFileError(meta_path, "'hallucinator' must describe the distiller of this MTFI method")
        h = Hallucinator.from_meta(meta["hallucinator"], encoder.extractors.get(hall.target), meta_path)
        if (h.kind, h.target) != (cfg.method, hall.target):
            raise ModelFileError(meta_path, f"holds a {h.kind} distiller to {h.target}, "
                                 f"not {cfg.method} to {hall.target}")
        core.hallucinator = h
    if not isinstance(meta.get("fusion"), dict):
        raise ModelFileError(meta_path, "'fusion' must hold the fitted fusion state")
    core.fusion = FusionState.from_saved(meta["fusion"], tensors, "fusion.", meta_path)
    # the fusion buffers were rebuilt from the saved arrays (an older layout upgraded): load those
    tensors = {**tensors, **{f"fusion.{k}": v for k, v in core.fusion.state_dict().items()}}
    try:
        core.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(weights, f"does not match detector.json ({_first_line(exc)})") from exc
    return core.eval()


def _empty_banks(core: DetectorCore, shapes, meta_path: Path) -> None:  # noqa: ANN001 - JSON value
    """One empty bank per stream, of the shape detector.json gives, to load the tensors into."""
    if not isinstance(shapes, dict) or set(shapes) != {s.name for s in core.streams}:
        raise ModelFileError(meta_path, f"'banks' must give the shape of each stream's bank, got {shapes!r}")
    def is_shape(v) -> bool:  # noqa: ANN001 - JSON value
        return isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)

    for s in core.streams:
        shape = shapes[s.name]
        views = isinstance(shape, dict) and set(shape) == {"image", "map"} and all(map(is_shape, shape.values()))
        if not (is_shape(shape) or views):
            raise ModelFileError(meta_path, f"bank shape of {s.name!r} must be [rows, dim] or "
                                 f"{{\"image\": [rows, dim], \"map\": [rows, dim]}}, got {shape!r}")
        core.banks[s.name] = empty_bank(core.config.memory, shape)


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def load_hallucinator(
    cfg: DetectorConfig, folder: Path, encoder: Encoder, *, device: str | torch.device
) -> Hallucinator:
    """The distiller saved in ``folder`` for the MTFI method of ``cfg``, ready to hallucinate."""
    target = next(s.target for s in streams_for(cfg) if s.hallucinated)
    return Hallucinator.load(folder, cfg.method, target, encoder.extractors.get(target), device=device)


def _number(value, where: Path, key: str, *, integer: bool = False):
    """``value`` when it is a finite number (an int with ``integer``) or None; else a ModelFileError."""
    ok = value is None or (isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
                           and math.isfinite(value))
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ModelFileError(where, f"{key!r} must be {kind} or null, got {value!r}")
    return value if value is None or integer else float(value)


def _calibration_fields(meta: dict, where: Path) -> tuple[float | None, int | None, dict[str, float] | None]:
    """``threshold``, ``threshold_samples`` and ``map_calibration`` of a detector.json, type-checked."""
    threshold = _number(meta.get("threshold"), where, "threshold")
    samples = _number(meta.get("threshold_samples"), where, "threshold_samples", integer=True)
    calibration = meta.get("map_calibration")
    if calibration is not None:
        if not isinstance(calibration, dict) or set(calibration) != {"good_p50", "good_p999"}:
            raise ModelFileError(where, f"'map_calibration' must hold good_p50 and good_p999, got {calibration!r}")
        calibration = {k: _number(v, where, f"map_calibration.{k}") for k, v in calibration.items()}
    return threshold, samples, calibration


def _check_widths(det: Detector, path: Path) -> None:
    """Banks must have the width of the features that will be scored against them."""
    for s in det.streams:
        if s.hallucinated:
            continue
        ext = det.encoder.extractor(s.source)
        bank = det.banks[s.name]
        if bank.dim != ext.out_channels:
            raise ModelFileError(path / WEIGHTS_FILE, f"bank {s.name!r} has width {bank.dim}, which does not match "
                                 f"the {s.source} extractor ({ext.out_channels})")
        if bank.split != ext.score_split:
            raise ModelFileError(path / META_FILE, f"bank {s.name!r} splits its features at channel "
                                 f"{bank.split}, the {s.source} extractor at {ext.score_split}")
