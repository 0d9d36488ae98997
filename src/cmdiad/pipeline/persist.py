"""Saving and loading fitted detectors: safetensors/npz + JSON, never pickle.

Layout of a model directory::

    detector.json        format version, config, streams, threshold, fusion state
    banks/<stream>/      MemoryBank.save output
    distiller/           distiller weights + JSON (MTFI methods only)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from cmdiad.config import DetectorConfig, from_dict, to_dict
from cmdiad.errors import CmdiadError, ConfigError, ModelFileError
from cmdiad.features import build_extractor
from cmdiad.features.cache import FeatureCache
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
    """An encoder with the extractors of ``cfg`` for ``modalities``, on ``device``."""
    configs = {"rgb": cfg.rgb, "xyz": cfg.xyz}
    configs = {m: configs[m] for m in modalities}
    extractors = {m: build_extractor(c).to(device).eval() for m, c in configs.items()}
    return Encoder(extractors, configs, cfg.data, cache=cache)


def save_detector(det: Detector, out: Path) -> Path:
    """Write ``det`` to the directory ``out`` (created; existing files of a model are replaced)."""
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
        "fusion": det.fuser.save_state(),
        "image_size": list(det.encoder.image_size),
    }
    tmp = out / "detector.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(out / "detector.json")
    log.info("saved detector to %s", out)
    return out


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
    """Load a detector saved by :func:`save_detector`; validates format, version and shapes."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        cfg = from_dict(DetectorConfig, meta["config"], "detector.json:config")
    except (ConfigError, KeyError) as exc:
        raise ModelFileError(path / "detector.json", f"invalid config: {exc}") from exc
    streams = streams_for(cfg)
    if meta.get("streams") != [s.name for s in streams]:
        raise ModelFileError(path / "detector.json", f"streams {meta.get('streams')} do not match the method")
    modalities = needed_modalities(cfg)
    if cfg.method in DESIGNS and design(cfg.method).learns_target_inputs:
        modalities = ("rgb", "xyz")  # the decoded input is re-encoded with the target extractor
    det = Detector(cfg, build_encoder(cfg, device=device, cache=cache, modalities=modalities), device=device)
    det.banks = {s.name: MemoryBank.load(path / "banks" / s.name, device=device) for s in streams}
    if any(s.hallucinated for s in streams):
        det.hallucinator = load_hallucinator(cfg, path / "distiller", det.encoder, device=device)
    try:
        det.fuser = Fuser.from_state(meta["fusion"])
    except (KeyError, ValueError, TypeError, CmdiadError) as exc:
        raise ModelFileError(path / "detector.json", f"invalid fusion state: {exc}") from exc
    det.threshold = meta.get("threshold")
    _check_widths(det, path)
    return det


def load_hallucinator(
    cfg: DetectorConfig, folder: Path, encoder: Encoder, *, device: str | torch.device
) -> Hallucinator:
    """The distiller saved in ``folder`` for the MTFI method of ``cfg``, ready to hallucinate."""
    target = next(s.target for s in streams_for(cfg) if s.hallucinated)
    return Hallucinator.load(folder, cfg.method, target, encoder.extractors.get(target), device=device)


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
