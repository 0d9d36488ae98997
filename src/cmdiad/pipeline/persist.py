"""Saving and loading fitted detectors: safetensors/npz + JSON, never pickle.

Layout of a model directory::

    detector.json        format version, config, streams, threshold (and the number of samples
                         that set it), heatmap calibration, fusion state
    banks/<stream>/      MemoryBank.save output
    distiller/           distiller weights + JSON (MTFI methods only)

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

from cmdiad.config import DetectorConfig, PointFeatureConfig, RGBFeatureConfig, from_dict, to_dict
from cmdiad.distill.train import META_FILE as DISTILLER_META
from cmdiad.errors import CmdiadError, ConfigError, ModelFileError
from cmdiad.features import build_extractor
from cmdiad.features.base import FeatureExtractor
from cmdiad.features.cache import FeatureCache
from cmdiad.io.atomic import atomic_dir, atomic_write_text
from cmdiad.io.layout import check_model_target
from cmdiad.memory.bank import META_FILE as BANK_META
from cmdiad.memory.bank import MemoryBank
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.encoder import Encoder
from cmdiad.pipeline.mtfi import DESIGNS, Hallucinator, design
from cmdiad.pipeline.streams import needed_modalities, streams_for
from cmdiad.scoring.fusion import Fuser

log = logging.getLogger(__name__)

FORMAT = "cmdiad-detector"
FORMAT_VERSION = 1


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
    """Write the files of ``det`` into ``out`` (an empty or new folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, bank in det.banks.items():
        bank.save(out / "banks" / name)
    if det.hallucinator is not None:
        det.hallucinator.save(out / "distiller")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(det.config),
        "streams": [s.name for s in det.streams],
        "threshold": det.threshold,
        "threshold_samples": getattr(det, "threshold_samples", None),
        "map_calibration": getattr(det, "map_calibration", None),
        "fusion": det.fuser.save_state(),
        "image_size": list(det.encoder.image_size),
    }
    atomic_write_text(out / "detector.json", json.dumps(meta, indent=2))


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
    meta_path = path / "detector.json"
    if not path.is_dir():
        raise ModelFileError(path, "not a model directory (it does not exist or is a file)")
    if not meta_path.is_file():
        raise ModelFileError(meta_path, "missing: this is not a cmdiad model directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(meta_path, f"corrupted JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(meta_path, f"not a cmdiad detector (format {meta.get('format')!r})"
                             if isinstance(meta, dict) else "not a cmdiad detector")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(meta_path, f"format version {meta.get('format_version')!r} is not supported "
                             f"(this cmdiad reads version {FORMAT_VERSION})")
    return meta


def load_detector(path: Path, *, device: str | torch.device = "cpu", cache: FeatureCache | None = None) -> Detector:
    """Load a detector saved by :func:`save_detector`; validates format, version, types and shapes.

    Raises:
        ModelFileError: Naming the file that is missing, foreign, corrupted or of a wrong type.
    """
    path = Path(path)
    meta = _read_meta(path)
    meta_path = path / "detector.json"
    try:
        cfg = from_dict(DetectorConfig, meta["config"], "detector.json:config")
    except (ConfigError, KeyError) as exc:
        raise ModelFileError(meta_path, f"invalid config: {exc}") from exc
    streams = streams_for(cfg)
    if meta.get("streams") != [s.name for s in streams]:
        raise ModelFileError(meta_path, f"streams {meta.get('streams')} do not match the method")
    threshold, samples, calibration = _calibration_fields(meta, meta_path)
    banks = {s.name: _guarded(path / "banks" / s.name / BANK_META, "memory bank", MemoryBank.load,
                              path / "banks" / s.name, device=device) for s in streams}
    hall = [s for s in streams if s.hallucinated]
    hallucinator = None
    if hall:
        hallucinator = _guarded(path / "distiller" / DISTILLER_META, "distiller", Hallucinator.load,
                                path / "distiller", cfg.method, hall[0].target, None, device=device)
    modalities = needed_modalities(cfg)
    if cfg.method in DESIGNS and design(cfg.method).learns_target_inputs:
        modalities = ("rgb", "xyz")  # the decoded input is re-encoded with the target extractor
    det = Detector(cfg, build_encoder(cfg, device=device, cache=cache, modalities=modalities), device=device)
    det.banks = banks
    if hallucinator is not None:
        hallucinator.target_extractor = det.encoder.extractors.get(hallucinator.target)
        det.hallucinator = hallucinator
    try:
        det.fuser = Fuser.from_state(meta["fusion"])
    except (KeyError, ValueError, TypeError, AttributeError, CmdiadError) as exc:
        raise ModelFileError(meta_path, f"invalid fusion state: {exc}") from exc
    det.threshold, det.threshold_samples, det.map_calibration = threshold, samples, calibration
    _check_widths(det, path)
    return det


def load_hallucinator(
    cfg: DetectorConfig, folder: Path, encoder: Encoder, *, device: str | torch.device
) -> Hallucinator:
    """The distiller saved in ``folder`` for the MTFI method of ``cfg``, ready to hallucinate."""
    target = next(s.target for s in streams_for(cfg) if s.hallucinated)
    return Hallucinator.load(folder, cfg.method, target, encoder.extractors.get(target), device=device)


def _guarded(where: Path, what: str, load, *args, **kwargs):
    """``load(*args, **kwargs)`` with any error from a malformed file as a ModelFileError on ``where``."""
    try:
        return load(*args, **kwargs)
    except CmdiadError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise ModelFileError(where, f"invalid {what} file ({type(exc).__name__}: {exc})") from exc


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
            raise ModelFileError(path / "banks" / s.name,
                                 f"bank width {bank.dim} does not match the {s.source} extractor ({ext.out_channels})")
