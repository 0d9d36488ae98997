"""Export a fitted RGB-only detector to one ONNX graph: normalised image -> score and anomaly map.

The exported module re-uses the detector's own parts inside ``forward`` so that tracing records
exactly what :meth:`~cmdiad.pipeline.detector.Detector.score` computes:

- the RGB extractor's ``patch_features`` (EfficientNet-Lite stages + 3x3 aggregation);
- per stream, the bank as a buffer with exact L2 kNN (``|q|² − 2q·b + |b|²`` then top-k, the
  distances refined as ``|q − b|`` like :class:`~cmdiad.memory.knn.KnnIndex`), PatchCore's
  re-weighting (:func:`~cmdiad.memory.bank.reweighted_image_score`) and
  :func:`~cmdiad.scoring.patch.anomaly_map` in ``float`` blur mode;
- the distiller of ``f2f``/``i2f`` rows (the detector's hallucinator);
- the fusion through the detector's fuser (``image_scores`` / ``pixel_scores``).

Only rows that read RGB alone and have no non-torch step are exportable (see
:func:`check_exportable`).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from cmdiad import __version__
from cmdiad.errors import CmdiadError
from cmdiad.memory.bank import MemoryBank, SplitBank, reweighted_image_score
from cmdiad.memory.knn import nearest_rows
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.streams import Stream, row_name
from cmdiad.scoring.patch import anomaly_map, image_score
from cmdiad.types import PatchFeatures

log = logging.getLogger(__name__)

ONNX_FORMAT = "cmdiad-onnx"
ONNX_FORMAT_VERSION = 1
EXPORTABLE_ROWS = ("rgb", "f2f_rgb", "i2f_rgb")
INPUT_NAME = "image"
OUTPUT_NAMES = ("image_score", "anomaly_map")
CANDIDATES = 8
"""Rows ranked by the expanded L2 formula before the exact re-ranking of the nearest neighbour."""


class ExportError(CmdiadError):
    """A detector cannot be exported, with the reason."""


def check_exportable(det: Detector) -> str:
    """The row name of ``det`` when it can be exported to ONNX; ExportError saying why otherwise."""
    cfg = det.config
    row = row_name(cfg.method, cfg.main)
    if row == "f2i_rgb":
        raise ExportError(
            f"row {row!r} cannot be exported to ONNX: it decodes a point cloud from the RGB features and "
            f"re-encodes it with the {cfg.xyz.name!r} xyz extractor; FPFH is computed by Open3D (C++), not by "
            "torch operators, so it is not an ONNX graph. A Point-MAE xyz extractor would be exportable only "
            "once its farthest-point sampling and kNN grouping are traced as plain torch ops, which this export "
            "does not do; export 'f2f_rgb' or 'i2f_rgb' instead")
    if row not in EXPORTABLE_ROWS:
        raise ExportError(
            f"row {row!r} cannot be exported to ONNX: it reads point clouds, and the xyz extractor "
            f"({cfg.xyz.name!r}: Open3D FPFH by default) is not an ONNX graph; exportable rows read RGB "
            f"only: {', '.join(EXPORTABLE_ROWS)}")
    if cfg.memory.blur_mode != "float":
        raise ExportError(f"blur_mode {cfg.memory.blur_mode!r} uses PIL's 8-bit blur, which is not an ONNX "
                          "graph; export needs memory.blur_mode='float'")
    if cfg.memory.knn_backend == "faiss" and cfg.memory.faiss_index != "flat":
        log.warning("the detector searches an approximate FAISS %r index; the ONNX graph searches exactly, "
                    "so scores may differ slightly", cfg.memory.faiss_index)
    return row


class BankHead(nn.Module):
    """One stream's scoring: bank kNN, re-weighted image score and blurred anomaly map.

    Args:
        bank: The stream's finalised memory bank (copied into a buffer).
        weight: The stream weight applied before fusion.
        image_size: Output ``(H, W)`` of the anomaly map.
        sigma: Blur σ (``float`` mode).
    """

    def __init__(self, bank: MemoryBank, weight: float, image_size: tuple[int, int], sigma: float) -> None:
        super().__init__()
        rows = bank.bank.detach().float().cpu()
        self.register_buffer("bank", rows.clone())
        self.register_buffer("bank_sq", (rows * rows).sum(dim=1))
        self.mean, self.std = bank.stats
        self.weight, self.image_size, self.sigma = float(weight), tuple(image_size), float(sigma)
        self.k = min(3, rows.shape[0]) if bank.config.reweight else 1
        self.image_score = bank.config.image_score
        self.candidates = min(CANDIDATES, rows.shape[0])

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted image scores ``(B,)`` and maps ``(B, H, W)`` of all-valid features ``(B, C, h, w)``."""
        q, patch, nn_idx = self.nearest(feats)
        image, amap = self.image_of(q, patch, nn_idx), self.map_of(patch)
        return self.weight * image_score(image, amap, self.image_score), self.weight * amap

    def nearest(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised queries ``(B*h*w, C)``, patch scores ``(B, h, w)`` and each patch's nearest bank row."""
        b, c, h, w = feats.shape
        q = (feats.permute(0, 2, 3, 1).reshape(-1, c).float() - self.mean) / self.std
        dist, idx = nearest_rows(q, self.bank, self.bank_sq, 1, self.candidates, self.bank.shape[0])
        return q, dist[:, 0].reshape(b, h, w), idx[:, 0]

    def image_of(self, q: torch.Tensor, patch: torch.Tensor, nn_idx: torch.Tensor) -> torch.Tensor:
        """Unweighted re-weighted patch-maximum scores ``(B,)`` of :meth:`nearest`'s outputs."""
        b, h, w = patch.shape
        s_star, where = patch.reshape(b, h * w).max(dim=1)
        s_star = s_star.clamp_min(0)
        if self.k < 2:
            return s_star
        c = q.shape[1]
        star_q = q.reshape(b, h * w, c).gather(1, where[:, None, None].expand(b, 1, c))[:, 0]
        star_nn = nn_idx.reshape(b, h * w).gather(1, where[:, None])[:, 0]
        _, neigh = nearest_rows(self.bank[star_nn], self.bank, self.bank_sq, self.k, self.k, self.bank.shape[0])
        d_neigh = torch.linalg.vector_norm(star_q[:, None, :] - self.bank[neigh[:, 1:]], dim=-1)
        return reweighted_image_score(s_star, d_neigh, c)

    def map_of(self, patch: torch.Tensor) -> torch.Tensor:
        """Unweighted blurred anomaly maps ``(B, H, W)`` of patch scores ``(B, h, w)``."""
        return anomaly_map(patch, self.image_size, sigma=self.sigma, mode="float")


class SplitHead(nn.Module):
    """A :class:`~cmdiad.memory.bank.SplitBank`'s scoring: image scores from the image view's head,
    maps from the map view's (the arguments are :class:`BankHead`'s); each view's search runs once
    and computes only what its view gives."""

    def __init__(self, bank: SplitBank, weight: float, image_size: tuple[int, int], sigma: float) -> None:
        super().__init__()
        self.split, self.weight, self.image_score = bank.split, float(weight), bank.config.image_score
        self.image = BankHead(bank.image, weight, image_size, sigma)
        self.map = BankHead(bank.map, weight, image_size, sigma)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted image scores ``(B,)`` and maps ``(B, H, W)`` of all-valid features ``(B, C, h, w)``."""
        image = self.image.image_of(*self.image.nearest(feats[:, : self.split]))
        amap = self.map.map_of(self.map.nearest(feats[:, self.split :])[1])
        return self.weight * image_score(image, amap, self.image_score), self.weight * amap


def bank_head(bank: MemoryBank | SplitBank, weight: float, image_size: tuple[int, int], sigma: float) -> nn.Module:
    """The export head of a stream's bank."""
    head = SplitHead if isinstance(bank, SplitBank) else BankHead
    return head(bank, weight, image_size, sigma)


class ExportModule(nn.Module):
    """A fitted RGB-only detector as a tensor-in, tensor-out module.

    Args:
        det: A fitted detector whose row passes :func:`check_exportable`.
    """

    def __init__(self, det: Detector) -> None:
        super().__init__()
        check_exportable(det)
        mem = det.config.memory
        self.extractor = det.encoder.extractor("rgb")
        self.hallucinator = det.hallucinator
        self.streams: list[Stream] = list(det.streams)
        self.heads = nn.ModuleList(
            bank_head(det.banks[s.name], s.weight, det.encoder.image_size, mem.blur_sigma) for s in self.streams
        )
        self.fuser = det.fuser
        self.image_size = det.encoder.image_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(B,)`` and anomaly maps ``(B, H, W)`` of normalised images ``(B, 3, H, W)``."""
        main = self.extractor.patch_features(x)
        images, maps = [], []
        for s, head in zip(self.streams, self.heads, strict=True):
            feats = main.features
            if s.hallucinated:
                assert self.hallucinator is not None
                feats = self.hallucinator(PatchFeatures(main.features, main.valid), x).features
            image, amap = head(feats)
            images.append(image)
            maps.append(amap)
        rows = torch.stack(images, dim=1)
        stacked = torch.stack(maps, dim=-1)
        b, h, w, k = stacked.shape
        fused_map = self.fuser.pixel_scores(stacked.reshape(-1, k)).reshape(b, h, w)
        return self.fuser.image_scores(rows), fused_map


def onnx_metadata(det: Detector, row: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported detector: what scoring a file needs besides the graph."""
    ext = det.encoder.extractor("rgb")
    meta = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "cmdiad_version": __version__,
        "row": row,
        "streams": [s.name for s in det.streams],
        "image_size": list(det.encoder.image_size),
        "mean": list(ext.mean),
        "std": list(ext.std),
        "interpolation": ext.interpolation,
        "threshold": det.threshold,
        "map_calibration": getattr(det, "map_calibration", None),
        "rgb_extractor": det.config.rgb.name,
    }
    return {k: json.dumps(v) for k, v in meta.items()}


def export_onnx(det: Detector, out: Path | str, *, opset: int = 17) -> Path:
    """Write ``det`` as an ONNX file with its metadata; ExportError for rows that cannot be exported.

    The graph input is ``image`` ``(B, 3, H, W)`` float32 (normalised, B dynamic); outputs are
    ``image_score`` ``(B,)`` and ``anomaly_map`` ``(B, H, W)``.
    """
    import onnx

    row = check_exportable(det)
    module = ExportModule(det).cpu().eval()
    dummy = torch.zeros(1, 3, *det.encoder.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # Shapes are fixed at export (the input size is part of the model); only B is dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            module, (dummy,), str(tmp), dynamo=False, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            opset_version=opset, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                               OUTPUT_NAMES[1]: {0: "batch"}},
        )
    model = onnx.load(str(tmp))
    for key, value in onnx_metadata(det, row).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(tmp))
    tmp.replace(out)
    log.info("exported %s to %s", row, out)
    return out


__all__ = ["EXPORTABLE_ROWS", "ExportError", "ExportModule", "check_exportable", "export_onnx", "onnx_metadata"]
