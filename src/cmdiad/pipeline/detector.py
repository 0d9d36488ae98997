"""The Detector: fits and runs a :class:`~cmdiad.pipeline.core.DetectorCore` on samples.

The core (banks, distiller, fusion: one module, one ``state_dict``) computes scores from
features; the Detector is the runner around it: it reads samples through the Encoder (files,
feature cache, batching), builds banks (shared between methods of a category), trains the
distiller, fits fusion and calibrates the threshold, and times what it does.

Every method of the paper is a :class:`~cmdiad.config.DetectorConfig` over these same parts
(see :mod:`cmdiad.pipeline.streams`); there is no per-method subclass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdiad.config import DetectorConfig
from cmdiad.distill.train import TrainReport
from cmdiad.errors import DatasetError
from cmdiad.memory.bank import MemoryBank, SplitBank, new_bank
from cmdiad.memory.moments import RunningMoments
from cmdiad.metrics.classification import auroc
from cmdiad.pipeline.core import DetectorCore, FusionState, StreamScores
from cmdiad.pipeline.encoder import Encoder, Progress, staged
from cmdiad.pipeline.mtfi import (
    DESIGNS,
    Design,
    Hallucinator,
    PairedData,
    choose_pixel_fusion,
    design,
    earned_fusion_config,
    fidelity,
    pixel_fusion_candidates,
    train_hallucinator,
)
from cmdiad.pipeline.streams import Stream, needed_modalities
from cmdiad.scoring.fusion import Fuser, with_partial_rows
from cmdiad.types import PatchFeatures, SampleRecord, Scores

log = logging.getLogger(__name__)

FIT_CHUNK_BATCHES = 8
"""Encoder batches per chunk in which a fit feeds a bank (bounds the fit's working copy of features)."""


@dataclass
class FitReport:
    """What fitting did. ``distill`` is None for bank-only methods."""

    fit_seconds: float
    num_train: int
    num_paired: int
    bank_sizes: dict[str, int] = field(default_factory=dict)
    distill: TrainReport | None = None
    fidelity: dict[str, float] | None = None
    """Hallucinated vs real target features on held-out good samples (:func:`~cmdiad.pipeline.mtfi.fidelity`)."""
    pixel_fusion: dict[str, Any] = field(default_factory=dict)
    """An MTFI row's pixel fusion chosen on labelled validation parts: ``chosen``, ``label_free``
    (what the fit had without them), ``labelled_parts`` and the candidates' ``p_auroc``; empty
    when there were none (``Detector._choose_pixel_fusion``)."""
    pixel_setting: str = ""
    """How the fitted ``gated`` fuser of an MTFI row takes the hallucinated map into the anomaly map
    (:attr:`~cmdiad.scoring.fusion.Fuser.pixel_setting`: from its fidelity, or chosen on labelled parts);
    empty for other rows and fusers."""


def paired_subset(records: Sequence[SampleRecord], fraction: float, seed: int) -> list[SampleRecord]:
    """Training records that keep both modalities: all fully paired ones, or a seeded fraction."""
    paired = [r for r in records if r.modalities >= {"rgb", "xyz"}]
    if fraction >= 1.0 or not paired:
        return paired
    keep = max(1, round(fraction * len(paired)))
    order = np.random.default_rng(seed).permutation(len(paired))[:keep]
    return [paired[i] for i in sorted(order)]


class Detector:
    """A fitted anomaly detector for one category.

    Args:
        config: Method, main modality and parts.
        encoder: Reads samples and computes features (shared across detectors of an experiment).
        device: Torch device of banks, networks and scoring.
        shared_banks: Optional dict shared by the detectors of one category: a real-modality
            bank (and its training-sample scores) is built once and reused by every method
            that has the same stream with the same settings.
        hallucinator: A distiller already trained for this method and main modality (e.g. on
            the training samples of every category, :meth:`train_distiller`); ``fit`` then uses
            it instead of training one on this category's samples.
    """

    def __init__(
        self,
        config: DetectorConfig,
        encoder: Encoder,
        *,
        device: str | torch.device = "cpu",
        shared_banks: dict | None = None,
        hallucinator: Hallucinator | None = None,
    ) -> None:
        self.config = config
        self._shared = shared_banks
        self.encoder = encoder
        self.device = torch.device(device)
        self.core = DetectorCore(config, encoder.image_size)
        """The fitted model: banks, distiller, fusion."""
        self.design: Design | None = design(config.method) if config.method in DESIGNS else None
        """The distillation design of an MTFI method (None for bank-only methods)."""
        self.core.hallucinator = hallucinator
        self._pretrained = hallucinator is not None
        self.threshold: float | None = None
        self.threshold_samples: int | None = None
        self.map_calibration: dict[str, float] | None = None
        self._reused_seconds = 0.0

    @property
    def streams(self) -> list[Stream]:
        """The method's streams, in the order of the fusion columns."""
        return self.core.streams

    @property
    def banks(self) -> dict[str, MemoryBank | SplitBank]:
        """Memory bank per stream name (the core's)."""
        return dict(self.core.banks.items())

    @property
    def hallucinator(self) -> Hallucinator | None:
        """The distiller of an MTFI method (the core's), None for bank-only methods."""
        return self.core.hallucinator

    @hallucinator.setter
    def hallucinator(self, value: Hallucinator | None) -> None:
        self.core.hallucinator = value

    @property
    def fuser(self) -> Fuser:
        """The fitted fusion rule (the core's)."""
        return self.core.fusion.fuser

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities read from disk at inference."""
        return needed_modalities(self.config)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: Sequence[SampleRecord],
        *,
        validation: Sequence[SampleRecord] = (),
        threshold_frr: float = 0.01,
        progress: Progress | None = None,
    ) -> FitReport:
        """Build banks (and the distiller), fit fusion and calibrate the threshold.

        Args:
            train: Good training samples; the main-modality bank uses every sample that has the
                main modality, the distiller the samples that have both.
            validation: Good samples for the threshold and the fusion's calibration (training
                scores are used when empty). Labelled defective ones among them (label 1, with
                masks) are never calibrated on: for an MTFI row they choose how its hallucinated
                anomaly map enters the fusion (``fusion.labelled_choice``).
            threshold_frr: Target false-reject rate on the good ``validation`` samples.
            progress: Optional ``progress(stage, done, total)``.
        """
        t0 = time.perf_counter()
        self._reused_seconds = 0.0
        usable = [r for r in train if set(self.modalities) <= r.modalities]
        if not usable:
            raise DatasetError(_folder_of(train), f"no training sample has the {' and '.join(self.modalities)} "
                               f"file(s) that the {self.config.method!r} method needs")
        for m in self.modalities:
            self.encoder.prepare(usable, m, progress)  # extraction once; banks then take features in chunks
        report = FitReport(0.0, len(usable), 0)
        if self.core.hallucinated is not None and not self._pretrained:
            report.num_paired, report.distill = self.train_distiller(train, progress)
        mean_std = self._standardization(train, usable)
        labelled = [r for r in validation if r.label == 1 and set(self.modalities) <= r.modalities]
        validation = [r for r in validation if r.label == 0]
        held_out = [r for r in validation if set(self.modalities) <= r.modalities]
        on_validation = self.config.fusion.fit_on == "validation" and bool(held_out)
        # Fusion fitted on training samples searches them again: a hallucinated stream keeps its
        # features from the bank build for that, instead of hallucinating them twice.
        kept: dict[str, list[PatchFeatures]] = {
            s.name: [] for s in self.streams if s.hallucinated and not on_validation
        }
        for s in self.streams:
            self.core.banks[s.name] = self._build_bank(
                s, usable, mean_std.get(s.target, (None, None)), progress, keep=kept.get(s.name)
            )
            report.bank_sizes[s.name] = self.core.banks[s.name].num_rows
        report.fidelity = self.hallucination_fidelity(validation)
        if self.core.hallucinated is not None:  # what the hallucinated stream earned on held-out parts
            self.core.fusion = FusionState(earned_fusion_config(self.config.fusion, report.fidelity))
        if on_validation:
            crossfit = self._crossfit_image_scores(usable, mean_std, progress)
            per = self.stream_scores(held_out, staged(progress, "validation scores"))
            self._fit_fusion(per, crossfit)
            if labelled and self.core.hallucinated is not None and self.config.fusion.labelled_choice:
                report.pixel_fusion = self._choose_pixel_fusion(per, crossfit, labelled, progress)
        else:
            if self.config.fusion.fit_on == "validation":
                log.warning("no validation samples: fusion fitted on training samples (their own banks)")
            # Training samples against their own banks: searched only here, where they are needed.
            self._fit_fusion({s.name: self._training_scores(s, usable, kept.get(s.name),
                                                            staged(progress, f"bank search {s.name}"))
                              for s in self.streams})
        if self.core.hallucinated is not None:
            report.pixel_setting = self.core.fusion.fuser.pixel_setting
        self._calibrate(held_out or usable, threshold_frr, progress)
        report.fit_seconds = time.perf_counter() - t0 + self._reused_seconds
        return report

    def _chunks(self, records: Sequence[SampleRecord]) -> list[Sequence[SampleRecord]]:
        """``records`` in chunks of whole scoring batches: what a bank takes at a time."""
        step = self.encoder.batch_size * FIT_CHUNK_BATCHES
        return [records[i : i + step] for i in range(0, len(records), step)]

    def _stream_features(self, s: Stream, records: Sequence[SampleRecord]) -> PatchFeatures:
        """The features stream ``s`` puts in its bank for ``records``: read, or hallucinated from the main ones."""
        main = self.encoder.features(records, s.source)
        if not s.hallucinated:
            return main
        inputs = self.encoder.inputs(records, s.source) if self.design.reads_main_inputs else None
        return self._hallucinate(main, inputs)

    def _training_scores(self, s: Stream, usable, kept: list[PatchFeatures] | None,
                         progress) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples' (image, map) scores against the stream's own bank, chunk by chunk
        (from ``kept``, the chunks the bank was built from, when given)."""
        parts, done = [], 0
        for i, chunk in enumerate(self._chunks(usable)):
            parts.append(self._score_bank_only(s, kept[i] if kept is not None else self._stream_features(s, chunk)))
            done += len(chunk)
            if progress is not None:
                progress("bank search", done, len(usable))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def train_distiller(
        self, train: Sequence[SampleRecord], progress: Progress | None = None
    ) -> tuple[int, TrainReport | None]:
        """Train this method's distiller on the paired samples of ``train`` (any categories).

        With ``distill.checkpoint`` the distiller is loaded instead (the report is then None).

        Returns:
            The number of paired samples it was trained on, and the training report.
        """
        s = next(s for s in self.streams if s.hallucinated)
        paired = paired_subset(train, self.config.data.paired_fraction, self.config.seed)
        if len(paired) < 2:
            raise DatasetError(_folder_of(train), f"MTFI needs at least 2 training samples with both rgb and "
                               f"xyz files, found {len(paired)}")
        self.hallucinator, report = self._train_distiller(s, paired, progress)
        return len(paired), report

    def _train_distiller(self, s: Stream, paired, progress) -> tuple[Hallucinator, TrainReport | None]:
        kind = self.config.method
        data = PairedData(
            main_features=self.encoder.features(paired, s.source),
            main_inputs=self.encoder.inputs(paired, s.source) if self.design.reads_main_inputs else None,
            target_features=self.encoder.features(paired, s.target),
            target_inputs=self.encoder.inputs(paired, s.target) if self.design.learns_target_inputs else None,
        )
        cb = None
        if progress is not None:
            epochs = self.config.distill.epochs
            cb = lambda e, tr, va: progress(f"train {kind} ({s.name}) loss {tr:.4f}", e + 1, epochs)  # noqa: E731
        return train_hallucinator(
            kind,
            data,
            target=s.target,
            target_extractor=self.encoder.extractor(s.target),
            image_size=self.encoder.image_size,
            cfg=self.config.distill,
            device=self.device,
            progress=cb,
            main_view=self.encoder.extractor(s.source).score_split,
        )

    def _hallucinate(self, main: PatchFeatures, inputs: torch.Tensor | None) -> PatchFeatures:
        return self.core.hallucinate(main, inputs, self.encoder.batch_size)

    def hallucination_fidelity(self, validation: Sequence[SampleRecord]) -> dict[str, float] | None:
        """Fidelity of the hallucinated stream on held-out samples that have both modalities."""
        hall = [s for s in self.streams if s.hallucinated]
        paired = [r for r in validation if r.modalities >= {"rgb", "xyz"}]
        if not hall or not paired:
            return None
        s = hall[0]
        inputs = self.encoder.inputs(paired, s.source) if self.design.reads_main_inputs else None
        predicted = self._hallucinate(self.encoder.features(paired, s.source), inputs)
        return fidelity(predicted, self.encoder.extractor(s.target).image_view(self.encoder.features(paired, s.target)))

    def _standardization(self, train, usable) -> dict[str, tuple[float, float]]:
        """Per-bank constants (empty dict) or M3DM's mixed ones: xyz-bank mean, rgb-bank std.

        As in the reference, the mixed constants serve the methods with two streams (dual and
        MTFI); a single-bank method standardises its bank with the bank's own mean and std. Both
        are accumulated over the valid patches chunk by chunk (float64), never over one copy of
        the whole training set.
        """
        if self.config.memory.standardize != "m3dm" or len(self.streams) < 2:
            return {}
        paired = paired_subset(train, self.config.data.paired_fraction, self.config.seed)
        source = {m: (usable if m in self.modalities else paired) for m in ("rgb", "xyz")}
        if not all(source.values()):
            log.warning("m3dm standardisation needs both modalities at training; using per-bank constants")
            return {}
        stats = {}
        for m in ("rgb", "xyz"):
            moments = RunningMoments()
            for chunk in self._chunks(source[m]):
                pf = self.encoder.features(chunk, m)
                moments.add(pf.features.permute(0, 2, 3, 1)[pf.valid])
            stats[m] = moments
        mean, std = stats["xyz"].mean, stats["rgb"].std
        return {"rgb": (mean, std), "xyz": (mean, std)}

    # ------------------------------------------------------------------ scoring
    def _reused(self, s: Stream, usable, mean_std, what: tuple, build: Callable[[], Any]) -> Any:
        """``build()``, or what another row of the run built for the same real stream, parts and settings.

        A reused result adds the seconds it took to build to ``self._reused_seconds`` so that
        every method's fit time counts its whole cost. A hallucinated stream's results are
        never shared (its distiller is the row's own).
        """
        if self._shared is None or s.hallucinated:
            return build()
        cfg = self.config
        key = (*what, s.name, tuple(r.key for r in usable), mean_std, cfg.memory, cfg.data, cfg.rgb, cfg.xyz, s.weight)
        if key in self._shared:
            value, seconds = self._shared[key]
            self._reused_seconds += seconds
            return value
        t0 = time.perf_counter()
        value = build()
        self._shared[key] = (value, time.perf_counter() - t0)
        return value

    def _build_bank(
        self, s: Stream, usable, mean_std, progress=None, keep: list | None = None, share: bool = True
    ) -> MemoryBank | SplitBank:
        """The stream's bank, fed chunk by chunk; reused when another row of the run built the same
        one (``share``). ``keep``, when given, receives the chunks' features (a hallucinated
        stream's bank is never reused, so it is always filled)."""

        def build() -> MemoryBank | SplitBank:
            # a hallucinated stream banks what its distiller produces: the image view of split features
            split = None if s.hallucinated else self.encoder.extractor(s.target).score_split
            bank = new_bank(self.config.memory, split, device=self.device)
            for chunk in self._chunks(usable):
                pf = self._stream_features(s, chunk)
                bank.add(pf)
                if keep is not None:
                    keep.append(pf)
            bank.finalize(*mean_std, progress=staged(progress, f"coreset {s.name}"))
            return bank

        return self._reused(s, usable, mean_std, ("bank",), build) if share else build()

    def calibration_scores(self, train: Sequence[SampleRecord]) -> dict[str, torch.Tensor]:
        """The cross-fitted image scores ``(N,)`` per real stream that :meth:`fit` adds to the fusion's
        calibration (``fusion.calibration_folds``), of the ``train`` samples that have the method's modalities."""
        usable = [r for r in train if set(self.modalities) <= r.modalities]
        return self._crossfit_image_scores(usable, self._standardization(train, usable))

    def _crossfit_image_scores(self, usable, mean_std, progress=None) -> dict[str, torch.Tensor]:
        """Image scores ``(N,)`` of the training parts ``usable`` per real stream, part ``i`` scored
        against the stream's bank built without fold ``i mod folds`` (``fusion.calibration_folds``):
        good parts that no bank has seen, for the fusion's calibration. Empty when off, with fewer
        training parts than folds, or with one stream (calibrating it cannot change its ranking)."""
        folds = self.config.fusion.calibration_folds
        if folds < 2 or len(usable) < folds or len(self.streams) < 2:
            return {}
        fold_of = np.arange(len(usable)) % folds

        def scores(s: Stream, ms) -> torch.Tensor:
            out = torch.empty(len(usable))
            for f in range(folds):
                bank = self._build_bank(s, [usable[i] for i in np.flatnonzero(fold_of != f)], ms, share=False)
                held = self._stream_features(s, [usable[i] for i in np.flatnonzero(fold_of == f)])
                out[torch.as_tensor(fold_of == f)] = self._score_bank_only(s, held, bank=bank)[0]
                if progress is not None:
                    progress(f"calibration folds {s.name}", f + 1, folds)
            return out

        ms = {s.name: mean_std.get(s.target, (None, None)) for s in self.streams}
        return {s.name: self._reused(s, usable, ms[s.name], ("folds", folds), lambda s=s: scores(s, ms[s.name]))
                for s in self.streams if not s.hallucinated}

    def stream_scores(self, records: Sequence[SampleRecord], progress: Progress | None = None) -> StreamScores:
        """Weighted per-stream image scores ``(N,)`` and maps ``(N, H, W)`` of ``records``, before fusion."""
        parts = []
        for i in range(0, len(records), self.encoder.batch_size):
            chunk = records[i : i + self.encoder.batch_size]
            parts.append(self.core.stream_scores(*self._encode(chunk)))
            if progress is not None:
                progress("stream scores", min(i + len(chunk), len(records)), len(records))
        return {k: (torch.cat([p[k][0] for p in parts]), torch.cat([p[k][1] for p in parts])) for k in parts[0]}

    def _fit_fusion(
        self, per: dict[str, tuple[torch.Tensor, torch.Tensor]], crossfit: dict[str, torch.Tensor] | None = None,
        state: FusionState | None = None,
    ) -> None:
        """Fit the fuser (``state``, else the core's) on per-stream scores ``per``, plus ``crossfit``
        image scores of training parts for some streams (NaN in the other columns: calibrated on
        what each column has)."""
        image_rows, maps = self.core.columns(per)
        n, pixel_rows = image_rows.shape[0], maps.reshape(-1, maps.shape[-1])
        names = [s.name for s in self.core.streams]
        extra = {k: v.numpy() for k, v in (crossfit or {}).items()}
        image_rows = torch.as_tensor(with_partial_rows(image_rows.detach().cpu().numpy(), names, extra))
        budget = self.config.fusion.max_pixel_rows
        if pixel_rows.shape[0] > budget:
            rng = np.random.default_rng(self.config.fusion.seed)
            pixel_rows = pixel_rows[torch.as_tensor(rng.choice(pixel_rows.shape[0], budget, replace=False))]
        (state or self.core.fusion).fit(image_rows, pixel_rows, [s.hallucinated for s in self.core.streams])
        log.info("fusion fitted on %d samples (image level: %d more cross-fitted training parts), %d pixel rows",
                 n, image_rows.shape[0] - n, pixel_rows.shape[0])

    def _choose_pixel_fusion(self, per: StreamScores, crossfit: dict[str, torch.Tensor] | None,
                             labelled: Sequence[SampleRecord], progress: Progress | None) -> dict[str, Any]:
        """Set the MTFI row's pixel fusion to the candidate (:func:`pixel_fusion_candidates`) that
        :func:`choose_pixel_fusion` keeps from its P-AUROC per defect type of the ``labelled`` parts,
        good pixels from the validation scores ``per``; returns what was tried and chosen (for the
        fit report: ``p_auroc`` per candidate and defect type)."""
        if not self.core.fusion.fuser.pixel_setting:
            log.info("labelled validation parts ignored: fusion kind %r has no pixel choice", self.config.fusion.kind)
            return {}
        masks = self.encoder.masks(labelled).numpy()
        defects = np.array([r.defect for r in labelled])
        types = sorted(t for t in set(defects.tolist()) if masks[defects == t].any())
        if not types:
            log.warning("labelled validation parts ignored: their masks mark no defect pixel")
            return {}
        k = len(self.streams)
        good_rows = self.core.columns(per)[1].reshape(-1, k)
        bad_rows = self.core.columns(self.stream_scores(labelled, staged(progress, "labelled validation scores")))[1]
        bad_rows = bad_rows.reshape(-1, k)
        current = self.core.fusion.fuser.config
        candidates = pixel_fusion_candidates(current)
        states, scores = {}, {}
        for name, cfg in candidates.items():
            states[name] = self.core.fusion if cfg == current else FusionState(cfg)
            if states[name] is not self.core.fusion:
                self._fit_fusion(per, crossfit, states[name])
            good = states[name].pixel_scores(good_rows).numpy()
            bad = states[name].pixel_scores(bad_rows).numpy().reshape(masks.shape)
            scores[name] = {t: auroc(np.concatenate([good, bad[defects == t].ravel()]),
                                     np.concatenate([np.zeros(good.size, bool), masks[defects == t].ravel()]), "pixel")
                            for t in types}
        default = next(n for n, c in candidates.items() if c == current)
        chosen = choose_pixel_fusion(scores, default)
        self.core.fusion = states[chosen]
        log.info("pixel fusion %r chosen on %d labelled validation parts (label-free: %r; mean P-AUROC %s)", chosen,
                 len(labelled), default, ", ".join(f"{n} {np.mean(list(v.values())):.3f}" for n, v in scores.items()))
        return {"chosen": chosen, "label_free": default, "labelled_parts": len(labelled), "p_auroc": scores}

    def _score_bank_only(
        self, s: Stream, pf: PatchFeatures, progress: Progress | None = None, bank: MemoryBank | SplitBank | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted scores of already-computed features of many samples, batch by batch (against
        ``bank``, or the stream's own)."""
        step, n = self.encoder.batch_size, pf.features.shape[0]
        parts = []
        for i in range(0, n, step):
            batch = PatchFeatures(pf.features[i : i + step], pf.valid[i : i + step])
            parts.append(self.core.bank_scores(s, batch, bank))
            if progress is not None:
                progress("bank search", min(i + step, n), n)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def score_features(self, feats: dict[str, PatchFeatures], inputs: torch.Tensor | None = None) -> Scores:
        """Fused scores of a batch given its main-modality features (and inputs for ``i2f``).

        Args:
            feats: Patch features per modality read, batch ``B``.
            inputs: ``(B, 3, H, W)`` main-modality inputs, needed by ``i2f`` only.
        """
        return self.core(feats, inputs)

    def score(self, records: Sequence[SampleRecord], progress: Progress | None = None) -> Scores:
        """Score samples, reading only the modalities this detector needs."""
        if not self.core.banks:
            raise RuntimeError("the detector is not fitted")
        lacking = [r for r in records if not set(self.modalities) <= r.modalities]
        if lacking:
            missing = sorted(set(self.modalities) - lacking[0].modalities)
            raise DatasetError(_folder_of(lacking), f"sample {lacking[0].stem} has no {'/'.join(missing)} file, "
                               f"which this {self.config.method!r} detector needs ({len(lacking)} such samples)")
        parts = []
        step = self.encoder.batch_size
        for i in range(0, len(records), step):
            chunk = records[i : i + step]
            feats, inputs = self._encode(chunk)
            parts.append(self.score_features(feats, inputs))
            if progress is not None:
                progress("score", min(i + step, len(records)), len(records))
        return _concat_scores(parts)

    def _encode(self, records: Sequence[SampleRecord]) -> tuple[dict[str, PatchFeatures], torch.Tensor | None]:
        """Features of every modality read, plus the main inputs for ``i2f`` (each file read once)."""
        if self.design is None or not self.design.reads_main_inputs:
            return {m: self.encoder.features(records, m) for m in self.modalities}, None
        inputs, feats = self.encoder.encode(records, self.config.main)
        return {self.config.main: feats}, inputs

    def _calibrate(self, records: Sequence[SampleRecord], frr: float, progress: Progress | None) -> None:
        """Image threshold at false-reject rate ``frr`` and good-pixel levels of the anomaly maps.

        Sets ``threshold``, ``threshold_samples`` (how many good samples set it) and
        ``map_calibration`` (``good_p50``, ``good_p999``: quantiles of every pixel of those
        samples' maps), which fix the colour scale of heatmaps independently of the batch.
        With fewer than ``1 / frr`` samples the threshold is simply their largest score;
        ``cmdiad fit`` warns about it.
        """
        scored = self.score(list(records), staged(progress, "calibrate"))
        scores = scored.image_score.numpy()
        pixels = scored.anomaly_map.numpy().ravel()
        self.threshold = float(np.quantile(scores, 1.0 - frr, method="higher"))
        self.threshold_samples = len(scores)
        self.map_calibration = {"good_p50": float(np.quantile(pixels, 0.5)),
                                "good_p999": float(np.quantile(pixels, 0.999))}
        log.info("threshold %.5g at FRR %.3f on %d samples", self.threshold, frr, len(scores))


def _folder_of(records: Sequence[SampleRecord]) -> Path | str:
    """The folder of the first record's first file, for error messages."""
    for r in records:
        for m in ("rgb", "xyz"):
            path = r.path_of(m)
            if path is not None:
                return path.parent.parent
    return records[0].key if records else "training set"


def _concat_scores(parts: list[Scores]) -> Scores:
    per = {
        k: (torch.cat([p.per_modality[k][0] for p in parts]), torch.cat([p.per_modality[k][1] for p in parts]))
        for k in parts[0].per_modality
    }
    return Scores(
        torch.cat([p.image_score for p in parts]), torch.cat([p.anomaly_map for p in parts]), per
    )


__all__ = ["Detector", "FitReport", "paired_subset"]
