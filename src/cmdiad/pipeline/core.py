"""The detector core: a module from patch features (and inputs) to :class:`~cmdiad.types.Scores`.

Everything a fitted detector computes with lives here, in buffers and submodules that follow
``.to(device)`` and one ``state_dict``:

- ``banks.<stream>.bank`` / ``banks.<stream>.standardisation``: each stream's memory bank
  (:class:`~cmdiad.memory.bank.MemoryBank`);
- ``hallucinator.net.*``: the distiller of an MTFI method (:class:`~cmdiad.pipeline.mtfi.Hallucinator`);
- ``fusion.*``: the fitted fusion arrays (:class:`FusionState`).

What is about files, samples and deployment (reading, the feature cache, batching, timing, banks
shared between methods, the threshold) belongs to the runner, :class:`~cmdiad.pipeline.detector.Detector`.
The extractors are not part of the core: they are frozen, come from their own weights files and
are named by the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmdiad.config import DetectorConfig, FusionConfig
from cmdiad.errors import ModelFileError
from cmdiad.memory.bank import MemoryBank, SplitBank
from cmdiad.pipeline.mtfi import Hallucinator
from cmdiad.pipeline.streams import Stream, streams_for
from cmdiad.scoring.fusion import Fuser, build_fuser
from cmdiad.scoring.patch import anomaly_map, image_score
from cmdiad.types import PatchFeatures, Scores

StreamScores = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per stream name: weighted image scores ``(B,)`` and anomaly maps ``(B, H, W)``."""


def _is_array(value) -> bool:  # noqa: ANN001 - any JSON value
    """A (nested) list of numbers: the JSON form of a fitted array in a fuser state."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, (int, float, list)) for v in value)


class FusionState(nn.Module):
    """A fuser whose fitted arrays are buffers (``fusion.<name>`` in the core's ``state_dict``).

    The fuser's JSON state (:meth:`~cmdiad.scoring.fusion.Fuser.save_state`) is split: arrays
    become buffers, the rest (kind, version, config) is :meth:`meta`. Loading a ``state_dict``
    rebuilds the fuser from the loaded buffers.

    Args:
        config: Fusion settings.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.fuser: Fuser = build_fuser(config)
        self._arrays: list[str] = []

    def fit(self, image_rows: torch.Tensor, pixel_rows: torch.Tensor, hallucinated: Sequence[bool]) -> None:
        """Fit the fuser on good image rows ``(N, K)`` and pixel rows ``(P, K)``; ``hallucinated`` per column."""
        self.fuser.fit(image_rows, pixel_rows, hallucinated)
        self._publish(self.fuser.save_state())

    def _publish(self, state: dict) -> None:
        self._arrays = sorted(k for k, v in state.items() if _is_array(v))
        for key in self._arrays:
            self.register_buffer(key, torch.as_tensor(np.asarray(state[key], dtype=np.float64)))

    def meta(self) -> dict:
        """The fuser state without its arrays, plus their names (``arrays``)."""
        state = self.fuser.save_state()
        return {**{k: v for k, v in state.items() if k not in self._arrays}, "arrays": list(self._arrays)}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], prefix: str, where: Path) -> FusionState:
        """Rebuild from :meth:`meta` and the ``<prefix><array>`` tensors of a saved ``state_dict``.

        Raises:
            ModelFileError: On ``where``, when the state is malformed.
        """
        try:
            arrays = list(meta["arrays"])
            state = {k: v for k, v in meta.items() if k != "arrays"}
            state.update({k: tensors[prefix + k].double().tolist() for k in arrays})
            fuser = Fuser.from_state(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(where, f"invalid fusion state ({type(exc).__name__}: {exc})") from exc
        out = cls(fuser.config)
        out.fuser = fuser
        out._publish(fuser.save_state())
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._arrays:
            state = self.fuser.save_state()
            state.update({k: getattr(self, k).double().tolist() for k in self._arrays})
            self.fuser = Fuser.from_state(state)

    def image_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused image scores ``(N,)`` of per-stream rows ``(N, K)``."""
        return self.fuser.image_scores(rows)

    def pixel_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused pixel scores ``(P,)`` of per-stream rows ``(P, K)``."""
        return self.fuser.pixel_scores(rows)


class DetectorCore(nn.Module):
    """Banks, distiller and fusion of one fitted detector: features in, scores out.

    Args:
        config: The detector's method, main modality and parts.
        image_size: ``(H, W)`` of the anomaly maps (the extractors' input size).
    """

    hallucinator: Hallucinator | None

    def __init__(self, config: DetectorConfig, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.streams: list[Stream] = streams_for(config)
        self.banks = nn.ModuleDict()
        self.hallucinator = None
        self.fusion = FusionState(config.fusion)

    @property
    def hallucinated(self) -> Stream | None:
        """The stream whose features the distiller produces (None for bank-only methods)."""
        return next((s for s in self.streams if s.hallucinated), None)

    def hallucinate(self, main: PatchFeatures, inputs: torch.Tensor | None, batch: int | None = None) -> PatchFeatures:
        """Hallucinated target features ``(N, C, h, w)`` of main features (and inputs), on CPU.

        Args:
            main: ``(N, Cm, hm, wm)`` main-modality features.
            inputs: ``(N, 3, H, W)`` main-modality inputs, for designs that read them.
            batch: Samples per forward pass (all at once when None).
        """
        if self.hallucinator is None:
            raise RuntimeError("this detector has no distiller")
        n = main.features.shape[0]
        step = batch or max(n, 1)
        parts = []
        for i in range(0, n, step):
            pf = PatchFeatures(main.features[i : i + step], main.valid[i : i + step])
            x = inputs[i : i + step] if inputs is not None else None
            parts.append(self.hallucinator(pf, x).to("cpu"))
        return PatchFeatures(torch.cat([p.features for p in parts]), torch.cat([p.valid for p in parts]))

    def bank_scores(
        self, s: Stream, pf: PatchFeatures, bank: MemoryBank | SplitBank | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of the stream's features against its bank (or ``bank``): weighted image scores
        ``(B,)``, maps ``(B, H, W)``."""
        mem = self.config.memory
        image, patch = (self.banks[s.name] if bank is None else bank).score(pf)
        amap = anomaly_map(patch, self.image_size, sigma=mem.blur_sigma, mode=mem.blur_mode).cpu()
        return s.weight * image_score(image.cpu(), amap, mem.image_score), s.weight * amap

    def stream_scores(self, feats: dict[str, PatchFeatures], inputs: torch.Tensor | None = None) -> StreamScores:
        """Per-stream scores of a batch, before fusion (see :meth:`forward` for the arguments)."""
        out = {}
        for s in self.streams:
            pf = feats[s.source] if not s.hallucinated else self.hallucinate(feats[s.source], inputs)
            out[s.name] = self.bank_scores(s, pf)
        return out

    def columns(self, per: StreamScores) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-stream scores as fusion columns: image rows ``(N, K)`` and maps ``(N, H, W, K)``, in stream order."""
        image_rows = torch.stack([per[s.name][0] for s in self.streams], dim=1)
        maps = torch.stack([per[s.name][1] for s in self.streams], dim=-1)
        return image_rows, maps

    def fuse(self, per: StreamScores) -> Scores:
        """Fused scores of per-stream scores."""
        image_rows, maps = self.columns(per)
        b, h, w, k = maps.shape
        image = self.fusion.image_scores(image_rows)
        pixel = self.fusion.pixel_scores(maps.reshape(-1, k))
        return Scores(image, pixel.reshape(b, h, w), per)

    @torch.no_grad()
    def forward(self, feats: dict[str, PatchFeatures], inputs: torch.Tensor | None = None) -> Scores:
        """Fused scores of a batch.

        Args:
            feats: Patch features of the batch per modality the method reads (``B`` samples).
            inputs: ``(B, 3, H, W)`` normalised main-modality inputs, for designs that read them.

        Returns:
            Image scores ``(B,)``, anomaly maps ``(B, H, W)`` and the per-stream scores.
        """
        if not self.banks:
            raise RuntimeError("the detector is not fitted")
        return self.fuse(self.stream_scores(feats, inputs))

    def extra_repr(self) -> str:
        return f"method={self.config.method}, main={self.config.main}, image_size={self.image_size}"


__all__ = ["DetectorCore", "FusionState", "StreamScores"]
