"""Decision-layer fusion of per-stream scores (method-spec §3.4).

Rows hold one column per stream (K columns). The per-stream weights of
:class:`~cmdiad.config.FusionConfig` (``rgb_weight``, ``xyz_weight``, ``hallucinated_weight``)
are applied by the pipeline to the columns *before* they reach a fuser; fusers only learn a
linear combination on top.

Every fuser here reduces to two weight vectors (image, pixel) with ``score = rows · w``:
- :class:`OCSVMFuser`: the coefficients of a linear ``SGDOneClassSVM`` (``score_samples``
  without the offset). A non-positive coefficient would silently invert a stream, so when one
  appears the fuser falls back to the normalised sum below and logs a warning.
- :class:`SumFuser`: each column divided by its mean absolute training value, then summed.

Two nonlinear fusers keep their fitted state as a few ``(·, K)`` arrays in the same two fields:
- :class:`CalibratedMaxFuser`: each column calibrated on good samples, maximum over columns;
- :class:`GatedFuser`: calibrated likewise; the maximum over the real sensors' columns plus the
  hallucinated columns' excess over a gate.

Fitting takes, besides the rows, which columns are *hallucinated* (MTFI streams computed from
another column's sensor) and which are real sensors; fusers that treat every column alike ignore it.
Image rows may hold NaN where a sample has no score for a stream (training parts scored by
cross-fitted banks of the real sensors only, ``FusionConfig.calibration_folds``): calibrated
fusers use each column's scores, the linear ones the rows that are complete.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cmdiad.config import FusionConfig, from_dict, to_dict
from cmdiad.registry import Registry

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def _as_numpy(rows: torch.Tensor | np.ndarray, partial: bool = False) -> np.ndarray:
    """Score rows ``(N, K)`` as float64; with ``partial``, NaN marks a missing score (every column needs one)."""
    arr = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected non-empty (N, K) score rows, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not (finite | (np.isnan(arr) if partial else False)).all() or not finite.any(axis=0).all():
        raise ValueError("score rows hold infinite values or a column without any score"
                         if partial else "score rows hold NaN or infinite values")
    return arr


def complete_rows(rows: np.ndarray) -> np.ndarray:
    """The rows ``(M, K)`` of ``rows`` ``(N, K)`` that have a score in every column."""
    return rows[~np.isnan(rows).any(axis=1)]


def with_partial_rows(rows: np.ndarray, names: Sequence[str], extra: Mapping[str, np.ndarray]) -> np.ndarray:
    """Image rows ``(N, K)`` of the streams ``names``, followed by ``M`` rows of the scores ``(M,)``
    that ``extra`` holds for some of them (NaN in the other columns)."""
    if not extra:
        return rows
    m = len(next(iter(extra.values())))
    more = np.stack([np.asarray(extra[n], dtype=np.float64) if n in extra else np.full(m, np.nan) for n in names], 1)
    return np.concatenate([np.asarray(rows, dtype=np.float64), more])


def normalised_sum_weights(rows: np.ndarray) -> np.ndarray:
    """``1 / mean|column|`` per column (K,); a column that is all 0 gets weight 1."""
    scale = np.abs(complete_rows(rows)).mean(axis=0)
    return 1.0 / np.where(scale > 0, scale, 1.0)


class Fuser:
    """Linear fusion of K per-stream score columns, fitted on training rows.

    Args:
        config: Fusion settings.
    """

    kind = "base"

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.image_weights: np.ndarray | None = None
        self.pixel_weights: np.ndarray | None = None

    @property
    def pixel_setting(self) -> str:
        """How this fuser's anomaly maps take a hallucinated stream's map, in words, where its
        config sets that (:func:`pixel_setting`); empty for fusers whose config has no such choice."""
        return ""

    def fit(
        self, image_rows: torch.Tensor | np.ndarray, pixel_rows: torch.Tensor | np.ndarray,
        hallucinated: Sequence[bool] | None = None,
    ) -> Fuser:
        """Fit on training image rows ``(N, K)`` and pixel rows ``(P, K)``; returns self.

        ``hallucinated`` says per column whether it is a hallucinated (MTFI) stream; ``None`` means
        the first column is a real sensor and the others are hallucinated (an MTFI row's order).
        Image rows may hold NaN for a stream that did not score a sample (at least one row is
        complete); pixel rows may not.
        """
        image, pixel = _as_numpy(image_rows, partial=True), _as_numpy(pixel_rows)
        if not len(complete_rows(image)):
            raise ValueError("no image row has a score in every column")
        if image.shape[1] != pixel.shape[1]:
            raise ValueError(f"image rows have {image.shape[1]} columns, pixel rows {pixel.shape[1]}")
        flags = column_roles(image.shape[1], hallucinated)
        pixel = self._subsample(pixel)
        self.image_weights = self._fit_weights(image, "image", flags, pixel)
        self.pixel_weights = self._fit_weights(pixel, "pixel", flags, pixel)
        return self

    def _fit_weights(self, rows: np.ndarray, what: str, hallucinated: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """The fitted array of one level (``what``) from its rows; ``pixels`` are the pixel rows of
        the same samples, which an image-level calibration may draw on."""
        raise NotImplementedError

    def _subsample(self, rows: np.ndarray) -> np.ndarray:
        limit = self.config.max_pixel_rows
        if rows.shape[0] <= limit:
            return rows
        keep = np.random.default_rng(self.config.seed).choice(rows.shape[0], limit, replace=False)
        return rows[np.sort(keep)]

    def _apply(self, rows: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
        if weights is None:
            raise RuntimeError("the fuser is not fitted")
        if rows.ndim != 2 or rows.shape[1] != weights.shape[0]:
            raise ValueError(f"rows {tuple(rows.shape)} do not have {weights.shape[0]} columns")
        return rows.float() @ torch.as_tensor(weights, dtype=torch.float32, device=rows.device)

    def image_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused image scores (N,) of rows (N, K)."""
        return self._apply(rows, self.image_weights)

    def pixel_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused pixel scores (P,) of rows (P, K)."""
        return self._apply(rows, self.pixel_weights)

    def save_state(self) -> dict[str, Any]:
        """A JSON-able state: kind, version, config and the two weight vectors."""
        if self.image_weights is None or self.pixel_weights is None:
            raise RuntimeError("the fuser is not fitted")
        return {
            "kind": self.kind, "version": STATE_VERSION, "config": to_dict(self.config),
            "image_weights": self.image_weights.tolist(), "pixel_weights": self.pixel_weights.tolist(),
        }  # fmt: skip

    @staticmethod
    def from_state(state: dict[str, Any]) -> Fuser:
        """Rebuild a fitted fuser from :meth:`save_state` output (ValueError if malformed)."""
        missing = {"kind", "version", "config", "image_weights", "pixel_weights"} - set(state)
        if missing or state["version"] != STATE_VERSION:
            raise ValueError(f"not a fuser state (missing {sorted(missing)}, version {state.get('version')})")
        fuser = FUSERS.get(state["kind"])(from_dict(FusionConfig, state["config"], "fuser config"))
        fuser.load_arrays(np.asarray(state["image_weights"], dtype=np.float64),
                          np.asarray(state["pixel_weights"], dtype=np.float64))
        return fuser

    def load_arrays(self, image_weights: np.ndarray, pixel_weights: np.ndarray) -> None:
        """Set the fitted arrays from a saved state (a kind may upgrade an older layout here)."""
        self.image_weights, self.pixel_weights = image_weights, pixel_weights


FUSERS: Registry[Fuser] = Registry("fuser")


@FUSERS.register("sum")
class SumFuser(Fuser):
    """Normalised sum: each column divided by its training mean absolute value."""

    kind = "sum"

    def _fit_weights(self, rows: np.ndarray, what: str, hallucinated: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        return normalised_sum_weights(rows)


@FUSERS.register("ocsvm")
class OCSVMFuser(Fuser):
    """M3DM's linear one-class SVM (``SGDOneClassSVM``), with a sign check and fallback."""

    kind = "ocsvm"

    def _fit_weights(self, rows: np.ndarray, what: str, hallucinated: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import SGDOneClassSVM

        cfg = self.config
        rows = complete_rows(rows)
        model = SGDOneClassSVM(nu=cfg.nu, max_iter=cfg.max_iter, random_state=cfg.seed)
        coef = np.asarray(model.fit(rows).coef_, dtype=np.float64).reshape(-1)
        if np.all(coef > 0):
            return coef
        logger.warning(
            "%s OCSVM fuser learned non-positive coefficient(s) %s, which would invert a stream; "
            "falling back to the normalised sum (columns / mean |training value|)",
            what, np.array2string(coef, precision=4),
        )  # fmt: skip
        return normalised_sum_weights(rows)


@FUSERS.register("calibrated_max")
class CalibratedMaxFuser(Fuser):
    """Each stream calibrated on good samples, then the most surprised stream decides.

    A column ``s`` becomes ``(s - centre) / spread`` with the centre and spread of the good
    samples it was fitted on (``FusionConfig.image_calibration`` / ``pixel_calibration``), so a
    value of 1 means the same degree of "unusual for a good part" in every stream; the fused score
    is the maximum over streams. Image scores (one per validation sample, few) use the mean and
    std, the std floored by the spread the pixels' tail implies for a part's maximum
    (``zscore_tail``, :func:`field_max_spread`); pixels (many) use the median and a high
    quantile, which aligns the streams' upper tails, where a pixel is declared anomalous or not.
    Why the maximum and not a weighted sum: without defective samples there is no signal to
    learn weights from, and a sum lets a stream that sees nothing of a defect dilute a stream that
    sees it clearly (a geometry-only bump in an RGB stream, a stain in an xyz stream). Under the
    maximum, a stream that carries no information about a defect only adds the noise of one more
    good-sample draw to the ranking, and a confident stream is never averaged away.

    State: ``image_weights`` and ``pixel_weights`` hold ``(2, K)`` arrays: centres, spreads.
    """

    kind = "calibrated_max"

    def _fit_weights(self, rows: np.ndarray, what: str, hallucinated: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        return calibration_constants(rows, self._calibration(what), self.config.calibration_quantile, pixels)

    def _calibration(self, what: str) -> str:
        """The calibration mode of a level (``image`` or ``pixel``)."""
        return self.config.image_calibration if what == "image" else self.config.pixel_calibration

    def _apply(self, rows: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
        if weights is None:
            raise RuntimeError("the fuser is not fitted")
        if rows.ndim != 2 or weights.ndim != 2 or rows.shape[1] != weights.shape[1]:
            raise ValueError(f"rows {tuple(rows.shape)} do not have {weights.shape[-1]} columns")
        w = torch.as_tensor(weights, dtype=torch.float32, device=rows.device)
        return ((rows.float() - w[0]) / w[1]).amax(dim=1)


@FUSERS.register("gated")
class GatedFuser(CalibratedMaxFuser):
    """Real sensors decide as in the calibrated maximum; a hallucinated stream adds only what lies
    beyond its good range.

    Columns are calibrated as in :class:`CalibratedMaxFuser` (so 1 is the same degree of "unusual
    for a good part" in every stream), then fused as ``max_real z + sum_hal max(0, z - gate)``:
    the maximum over the real sensors' columns, plus each hallucinated column's excess over
    ``gate`` = ``FusionConfig.image_gate`` / ``pixel_gate`` in calibrated units (``combine`` =
    ``gated``), the maximum over every column (``combine`` = ``max``), or, for pixels, the
    maximum over the real columns alone (``combine`` = ``real``). A ``zscore`` or
    ``zscore_tail``-calibrated level's gate is widened for the few samples its mean and spread come from
    (:func:`student_t_gate`, ``FusionConfig.gate_correction``): 3 std of 6 validation parts are
    exceeded by about 3 % of good parts, not 0.13 %. With two real sensors
    (``dual``) this is the calibrated maximum; for an MTFI row, the real sensor's ranking is kept
    wherever the hallucinated stream is within its good range. Pixels: a hallucinated column
    is raised by ``FusionConfig.pixel_offset`` calibrated units (folded into its centre) before
    they are combined; the detector sets it to 0 for a hallucination that does not explain the
    real features of held-out parts (:func:`cmdiad.pipeline.mtfi.earned_fusion_config`).
    Why the two roles differ: a real second sensor is independent evidence, and a defect that
    only it sees (a stain for a 3D scan) must be able to decide. A hallucinated stream is computed
    from the main sensor's own input, so it carries no evidence that sensor lacks beyond what the
    distiller learned, and its errors on unseen good parts are heavy-tailed: a few good parts get
    scores far above any validation part. Under the maximum every such excursion is a false alarm
    that outranks defects the real sensor saw clearly; behind the gate only confident ones count.

    State: ``image_weights`` / ``pixel_weights`` hold ``(4, K)`` arrays: centres, spreads, gates
    (0 for a real column) and the hallucinated flags (1 = gated). A ``(3, K)`` state, written
    before the flags existed, gated every column but the first and loads as such.
    """

    kind = "gated"

    @property
    def pixel_setting(self) -> str:
        return pixel_setting(self.config)

    def _fit_weights(self, rows: np.ndarray, what: str, hallucinated: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        constants = super()._fit_weights(rows, what, hallucinated, pixels)
        gate = self.config.image_gate if what == "image" else self.config.pixel_gate
        gates = np.full(rows.shape[1], float(gate))
        if self._calibration(what) in MOMENT_CALIBRATIONS and self.config.gate_correction == "student_t":
            gates = np.array([student_t_gate(gate, int(n)) for n in (~np.isnan(rows)).sum(axis=0)])
        flags = hallucinated.astype(np.float64)[None]
        if what == "pixel":  # weight * (z + offset) for hallucinated columns, folded into their constants
            constants = constants.copy()
            constants[0] -= self.config.pixel_offset * constants[1] * flags[0]
            if self.config.pixel_weight > 0:
                constants[1] /= np.where(flags[0] > 0, self.config.pixel_weight, 1.0)
        return np.concatenate([constants, gates * flags, flags])

    def _combine(self, what: str) -> str:
        if what == "image":
            return self.config.image_combine
        return "real" if pixel_left_out(self.config) else self.config.pixel_combine

    def image_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused image scores (N,) of rows (N, K)."""
        return self._gated(rows, self.image_weights, self._combine("image"))

    def pixel_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused pixel scores (P,) of rows (P, K)."""
        return self._gated(rows, self.pixel_weights, self._combine("pixel"))

    @staticmethod
    def _gated(rows: torch.Tensor, weights: np.ndarray | None, combine: str) -> torch.Tensor:
        if weights is None:
            raise RuntimeError("the fuser is not fitted")
        if rows.ndim != 2 or weights.ndim != 2 or weights.shape[0] != 4 or rows.shape[1] != weights.shape[1]:
            raise ValueError(f"rows {tuple(rows.shape)} do not have {weights.shape[-1]} columns")
        w = torch.as_tensor(weights, dtype=torch.float32, device=rows.device)
        z = (rows.float() - w[0]) / w[1]
        if combine == "max":
            return z.amax(dim=1)
        gated = w[3] > 0.5
        real = z.masked_fill(gated, float("-inf")).amax(dim=1)
        if combine == "real":
            return real
        excess = ((z - w[2]).clamp(min=0) * gated.to(z.dtype)).sum(dim=1)
        return real + excess

    def load_arrays(self, image_weights: np.ndarray, pixel_weights: np.ndarray) -> None:
        self.image_weights, self.pixel_weights = _with_flags(image_weights), _with_flags(pixel_weights)


LEFT_OUT = "main sensor only"
"""The :func:`pixel_setting` of a fuser whose anomaly maps leave the hallucinated map out."""


def pixel_left_out(fusion: FusionConfig) -> bool:
    """Whether a ``gated`` fuser's pixels leave a hallucinated map out: ``pixel_combine = "real"``
    or a ``pixel_weight`` of 0."""
    return fusion.pixel_combine == "real" or fusion.pixel_weight == 0


def pixel_setting(fusion: FusionConfig) -> str:
    """How a ``gated`` fuser's pixels take an MTFI row's hallucinated map, in words (the names of
    :func:`cmdiad.pipeline.mtfi.pixel_fusion_candidates`): ``main sensor only`` (left out),
    ``maximum, offset B``, or ``added above gate G, offset B`` (``pixel_combine = "gated"``)."""
    if pixel_left_out(fusion):
        return LEFT_OUT
    weight = "" if fusion.pixel_weight == 1 else f", weight {fusion.pixel_weight:.3g}"
    if fusion.pixel_combine == "max":
        return f"maximum, offset {fusion.pixel_offset:g}{weight}"
    return f"added above gate {fusion.pixel_gate:g}, offset {fusion.pixel_offset:g}{weight}"


def _with_flags(weights: np.ndarray) -> np.ndarray:
    """A gated state with its flags row; a 3-row state (no flags) gated every column but the first."""
    if weights.ndim == 2 and weights.shape[0] == 3:
        flags = np.ones((1, weights.shape[1]))
        flags[0, 0] = 0.0
        return np.concatenate([weights, flags])
    return weights


def student_t_gate(gate: float, n: int) -> float:
    """A z-score gate widened for mean and spread estimated from ``n`` good samples.

    ``gate`` standard deviations of a known normal distribution leave a false-alarm rate
    ``p = 1 - Phi(gate)``. With the mean and the population standard deviation of ``n`` samples,
    a new good sample exceeds ``gate`` far more often (about 3 % of good parts for ``gate = 3``,
    ``n = 6``); the one-sided prediction bound at the same ``p`` is
    ``t_{n-1}^{-1}(1 - p) * sqrt(1 + 1/n) * sqrt(n / (n - 1))`` (the last factor converts the
    sample standard deviation to the population one that ``zscore`` divides by). It tends to
    ``gate`` as ``n`` grows; below 2 samples there is no spread to correct and ``gate`` is kept.
    """
    if n < 2:
        return float(gate)
    from scipy import stats  # 0.5 s to import: only where a gated fuser is fitted

    p = stats.norm.sf(gate)
    return float(stats.t.isf(p, n - 1) * np.sqrt((1 + 1 / n) * n / (n - 1)))


def column_roles(k: int, hallucinated: Sequence[bool] | None) -> np.ndarray:
    """Per-column hallucinated flags ``(K,)`` (bool); ``None``: every column but the first.

    Raises:
        ValueError: The flags do not match the ``k`` columns, or every column is hallucinated.
    """
    flags = np.arange(k) > 0 if hallucinated is None else np.asarray(list(hallucinated), dtype=bool)
    if flags.shape != (k,):
        raise ValueError(f"{len(flags)} hallucinated flags for {k} score columns")
    if k and flags.all():
        raise ValueError("every score column is hallucinated; at least one must be a real sensor")
    return flags


MOMENT_CALIBRATIONS = ("zscore", "zscore_tail")
"""Calibrations whose centre and spread are the moments of the few image scores (gates widen for them)."""

FIELD_MAX_SCALE = float(np.pi / np.sqrt(6.0) / np.log(10.0))
"""Spread of a part's maximum pixel score per unit of its pixels' ``q(0.999) - q(0.99)`` (0.557)."""


def field_max_spread(pixels: np.ndarray) -> np.ndarray:
    """The spread ``(K,)`` that good parts' maximum scores have, from the tail of their pixel scores ``(P, K)``.

    An image score is the (re-weighted) maximum of a part's patch scores. Where the good pixels'
    upper tail is exponential with scale ``b`` (``q(1 - p) = c - b ln p``), ``b = (q(0.999) -
    q(0.99)) / ln 10``, and the maximum of many such pixels follows a Gumbel law of scale ``b``,
    whose standard deviation is ``b pi / sqrt(6)``. Estimated from every pixel of the validation
    parts, this spread does not hinge on the few image scores that the parts give.
    """
    hi, lo = np.quantile(pixels, [0.999, 0.99], axis=0)
    return FIELD_MAX_SCALE * (hi - lo)


def calibration_constants(
    rows: np.ndarray, mode: str, quantile: float, pixels: np.ndarray | None = None
) -> np.ndarray:
    """Centre and spread ``(2, K)`` of each column of good-sample rows ``(N, K)`` (NaN: no score, left out).

    ``zscore``: mean and standard deviation. ``zscore_tail`` (image rows; needs the same samples'
    ``pixels`` ``(P, K)``): the mean, and the larger of the standard deviation and
    :func:`field_max_spread`, so that a spread which a few near-equal image scores happen to make
    small is not trusted below what the pixels' tail implies. ``quantile``: median and the
    distance from the median to the ``quantile`` (the tail where decisions are made). A spread that
    is 0 (a constant column) becomes the largest absolute value of the column, or 1.
    """
    if mode in MOMENT_CALIBRATIONS:
        centre, spread = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
        if mode == "zscore_tail":
            if pixels is None or pixels.ndim != 2 or pixels.shape[1] != rows.shape[1]:
                raise ValueError(f"zscore_tail calibration needs pixel rows with {rows.shape[1]} columns")
            spread = np.maximum(spread, field_max_spread(pixels))
    elif np.isnan(rows).any():
        centre = np.nanmedian(rows, axis=0)
        spread = np.nanquantile(rows, quantile, axis=0) - centre
    else:  # nanquantile is several times slower on the million pixel rows
        centre = np.median(rows, axis=0)
        spread = np.quantile(rows, quantile, axis=0) - centre
    fallback = np.nanmax(np.abs(rows), axis=0)
    spread = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
    return np.stack([centre, spread])


def build_fuser(cfg: FusionConfig) -> Fuser:
    """The fuser ``cfg.kind`` built from ``cfg``."""
    return FUSERS.get(cfg.kind)(cfg)
