"""Reading model folders of format version 1, converted in memory to version 2's meta and tensors.

Version 1 (cmdiad before the one-file format) kept each part in its own folder::

    detector.json                          config, streams, threshold, calibration, fuser state (arrays inline)
    banks/<stream>/bank.json               format ``cmdiad.memory_bank`` 1: mean, std, num_entries, dim
    banks/<stream>/bank.safetensors        ``bank`` (num_entries, dim)
    distiller/distiller.json               format ``cmdiad.distiller`` 1: kind, architecture, kwargs
    distiller/distiller.safetensors        the network's state_dict
    distiller/hallucinator.json            kind, target, grid (optional)

Nothing is written: saving the loaded detector writes version 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmdiad.config import DetectorConfig
from cmdiad.errors import ModelFileError
from cmdiad.io.meta import read_json_object, read_meta, read_tensors
from cmdiad.pipeline.core import _is_array
from cmdiad.pipeline.streams import streams_for

MISSING = "tensor file of a format-1 model folder"


def _bank(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> list[int]:
    """Add the bank of stream ``name`` to ``tensors``; returns its shape."""
    meta_path = folder / "bank.json"
    meta = read_meta(meta_path, "cmdiad.memory_bank", 1, what="memory bank",
                     required=("mean", "std", "num_entries", "dim"))
    try:
        mean, std, shape = float(meta["mean"]), float(meta["std"]), [int(meta["num_entries"]), int(meta["dim"])]
    except (TypeError, ValueError) as exc:
        raise ModelFileError(meta_path, f"invalid bank metadata ({exc})") from exc
    bank = read_tensors(folder / "bank.safetensors", missing=MISSING).get("bank")
    if bank is None or list(bank.shape) != shape:
        got = None if bank is None else list(bank.shape)
        raise ModelFileError(folder / "bank.safetensors", f"bank tensor shape {got} does not match the metadata "
                             f"{shape}")
    tensors[f"banks.{name}.bank"] = bank.float()
    tensors[f"banks.{name}.standardisation"] = torch.tensor([mean, std], dtype=torch.float64)
    return shape


def _distiller(folder: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Add the distiller's weights to ``tensors``; returns the hallucinator description."""
    net = read_meta(folder / "distiller.json", "cmdiad.distiller", 1, what="distiller", required=("kind", "kwargs"))
    extra = read_json_object(folder / "hallucinator.json", what="hallucinator") if (
        folder / "hallucinator.json").is_file() else {}
    for key, value in read_tensors(folder / "distiller.safetensors", missing=MISSING).items():
        tensors[f"hallucinator.net.{key}"] = value
    return {"kind": extra.get("kind", net["kind"]), "target": extra.get("target"), "grid": extra.get("grid"),
            "network": {k: net[k] for k in ("kind", "architecture", "kwargs") if k in net}}


def convert(path: Path, meta: dict, cfg: DetectorConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Version-2 meta and tensors of the version-1 folder ``path`` (whose detector.json is ``meta``).

    Raises:
        ModelFileError: A part is missing or malformed (the message names its file).
    """
    tensors: dict[str, torch.Tensor] = {}
    streams = streams_for(cfg)
    out = dict(meta)
    out["banks"] = {s.name: _bank(path / "banks" / s.name, s.name, tensors) for s in streams}
    hall = next((s for s in streams if s.hallucinated), None)
    out["hallucinator"] = None
    if hall is not None:
        out["hallucinator"] = _distiller(path / "distiller", tensors)
        out["hallucinator"]["target"] = out["hallucinator"]["target"] or hall.target
    fusion = meta.get("fusion")
    if not isinstance(fusion, dict):
        raise ModelFileError(path / "detector.json", "'fusion' must hold the fitted fusion state")
    arrays = sorted(k for k, v in fusion.items() if _is_array(v))
    for key in arrays:
        tensors[f"fusion.{key}"] = torch.tensor(fusion[key], dtype=torch.float64)
    out["fusion"] = {**{k: v for k, v in fusion.items() if k not in arrays}, "arrays": arrays}
    return out, tensors


__all__ = ["convert"]
