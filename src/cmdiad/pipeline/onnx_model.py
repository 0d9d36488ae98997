"""Scoring with an exported ONNX detector (onnxruntime), behind the interface a Router needs.

:class:`OnnxDetector` reads the RGB file of each record with the preprocessing the exported
graph's metadata records (size, interpolation, mean/std), runs the graph and returns
:class:`~cmdiad.types.Scores`. :func:`load_model` opens either kind of model: a model folder
(a :class:`~cmdiad.pipeline.routing.Router`) or an ``.onnx`` file (a one-route Router).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdiad.errors import DatasetError, ModelFileError
from cmdiad.features.cache import FeatureCache
from cmdiad.io.mvtec3d import load_sample
from cmdiad.pipeline.export import INPUT_NAME, ONNX_FORMAT, ONNX_FORMAT_VERSION
from cmdiad.pipeline.routing import Router
from cmdiad.preprocessing.image import resized_unit
from cmdiad.types import SampleRecord, Scores

log = logging.getLogger(__name__)

_REQUIRED = ("row", "image_size", "mean", "std", "interpolation", "threshold")


def read_onnx_metadata(path: Path | str) -> dict[str, Any]:
    """The decoded ``metadata_props`` of an exported detector; ModelFileError when foreign or corrupt."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: json.loads(p.value) for p in model.metadata_props}
    except Exception as exc:  # noqa: BLE001 - any parser failure means a bad file
        raise ModelFileError(path, f"not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    if props.get("format") != ONNX_FORMAT:
        raise ModelFileError(path, f"not a cmdiad ONNX export (metadata format {props.get('format')!r})")
    if props.get("format_version") != ONNX_FORMAT_VERSION:
        raise ModelFileError(path, f"ONNX export version {props.get('format_version')!r}, this cmdiad reads "
                                   f"{ONNX_FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in props]
    if missing:
        raise ModelFileError(path, f"ONNX metadata lacks {', '.join(missing)}")
    return props


class OnnxDetector:
    """An exported RGB-only detector run by onnxruntime.

    Args:
        path: The ``.onnx`` file written by :func:`~cmdiad.pipeline.export.export_onnx`.
        threads: onnxruntime intra-op threads; None lets onnxruntime choose.
        batch_size: Samples per graph call.
        optimization: onnxruntime graph optimisation level, ``all`` (default) or ``basic``.
    """

    modalities = ("rgb",)

    def __init__(self, path: Path | str, *, threads: int | None = None, batch_size: int = 8,
                 optimization: str = "all") -> None:
        import onnxruntime as ort

        level = ort.GraphOptimizationLevel
        levels = {"basic": level.ORT_ENABLE_BASIC, "all": level.ORT_ENABLE_ALL}
        if optimization not in levels:
            raise ValueError(f"unknown optimization {optimization!r}; known: {', '.join(levels)}")

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[optimization]
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: spinning doubled latency on a shared CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size
        self.threshold: float | None = self.metadata["threshold"]
        self.map_calibration = self.metadata.get("map_calibration")
        self.image_size: tuple[int, int] = tuple(self.metadata["image_size"])  # type: ignore[assignment]
        self.row: str = self.metadata["row"]

    def preprocess(self, records: Sequence[SampleRecord]) -> np.ndarray:
        """Normalised inputs ``(N, 3, H, W)`` float32 of the records' RGB files."""
        md = self.metadata
        mean, std = (np.asarray(md[k], dtype=np.float32) for k in ("mean", "std"))
        out = np.empty((len(records), 3, *self.image_size), dtype=np.float32)
        for i, r in enumerate(records):
            if r.rgb_path is None:
                raise DatasetError(r.key, f"sample {r.stem} has no rgb file, which this ONNX model needs")
            rgb = load_sample(r, ("rgb",)).rgb
            # numpy, channels last: the same float32 arithmetic as normalize(resize_rgb(...)), without
            # torch's per-op dispatch on a small (3, H, W) image (profiled with cProfile on a busy
            # 2-core machine: 4 of the 12 ms of one 192x192 part's preprocessing)
            out[i] = ((resized_unit(rgb, self.image_size, md["interpolation"]) - mean) / std).transpose(2, 0, 1)
        return out

    def score_inputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``(N,)`` and anomaly maps ``(N, H, W)`` of normalised inputs ``(N, 3, H, W)``."""
        image, amap = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return image, amap

    def score(self, records: Sequence[SampleRecord], progress=None) -> Scores:
        """Fused scores of ``records`` (``per_modality`` is empty: the graph outputs fused scores only)."""
        images, maps = [], []
        for i in range(0, len(records), self.batch_size):
            image, amap = self.score_inputs(self.preprocess(records[i : i + self.batch_size]))
            images.append(image)
            maps.append(amap)
            if progress is not None:
                progress("score", min(i + self.batch_size, len(records)), len(records))
        return Scores(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(maps)), {})


def load_onnx_model(path: Path | str, *, threads: int | None = None, optimization: str = "all") -> OnnxDetector:
    """Open an exported ``.onnx`` detector (see :class:`OnnxDetector`)."""
    return OnnxDetector(path, threads=threads, optimization=optimization)


def load_model(path: Path | str, device: str | torch.device = "cpu", *, threads: int | None = None,
               cache: FeatureCache | None = None) -> Router:
    """A Router for a model folder or model set, or a one-route (``rgb``) Router for an ``.onnx`` file.

    Args:
        path: Model folder, model-set folder or ``.onnx`` file.
        device: Torch device of a model folder's detectors.
        threads: onnxruntime intra-op threads of an ``.onnx`` model.
        cache: Feature cache of a model folder's encoders (an in-memory one when None).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return Router({"rgb": load_onnx_model(path, threads=threads)})  # type: ignore[dict-item]
    return Router.load(path, device=device, cache=cache)


__all__ = ["OnnxDetector", "load_model", "load_onnx_model", "read_onnx_metadata"]
