"""Fusers: positive OCSVM coefficients, fallback to the normalised sum, state round-trip."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from cmdiad.config import FusionConfig
from cmdiad.errors import ConfigError
from cmdiad.metrics.classification import auroc
from cmdiad.scoring.fusion import (
    FUSERS,
    CalibratedMaxFuser,
    Fuser,
    GatedFuser,
    OCSVMFuser,
    SumFuser,
    build_fuser,
    field_max_spread,
    pixel_setting,
    student_t_gate,
)


def _rows(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.abs(rng.normal([2.0, 0.5], [0.5, 0.1], size=(n, 2)))).float()


def test_registry_and_builder() -> None:
    assert FUSERS.names() == ["calibrated_max", "gated", "ocsvm", "sum"]
    assert isinstance(build_fuser(FusionConfig(kind="calibrated_max")), CalibratedMaxFuser)
    assert isinstance(build_fuser(FusionConfig(kind="sum")), SumFuser)
    assert isinstance(build_fuser(FusionConfig()), OCSVMFuser)


def test_ocsvm_coefficients_positive_on_positive_inputs(caplog: pytest.LogCaptureFixture) -> None:
    fuser = OCSVMFuser(FusionConfig())
    with caplog.at_level(logging.WARNING):
        fuser.fit(_rows(200, 0), _rows(2000, 1))
    assert (fuser.image_weights > 0).all() and (fuser.pixel_weights > 0).all()
    assert not caplog.records
    rows = _rows(5, 2)
    expected = rows.double().numpy() @ fuser.image_weights
    assert np.allclose(fuser.image_scores(rows).numpy(), expected, rtol=1e-5)


def test_negative_coefficient_falls_back_to_normalised_sum(caplog: pytest.LogCaptureFixture) -> None:
    # Centred columns make the linear one-class SVM learn a negative coefficient.
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(np.c_[rng.normal(5, 1, 300), rng.normal(0, 1, 300) - 3]).float()
    fuser = OCSVMFuser(FusionConfig())
    with caplog.at_level(logging.WARNING, logger="cmdiad.scoring.fusion"):
        fuser.fit(rows, rows)
    assert any("falling back to the normalised sum" in r.message for r in caplog.records)
    scale = np.abs(rows.double().numpy()).mean(axis=0)
    assert np.allclose(fuser.image_weights, 1 / scale)


def test_sum_fuser_normalises_columns() -> None:
    rows = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    fuser = SumFuser(FusionConfig(kind="sum")).fit(rows, rows)
    assert torch.allclose(fuser.image_scores(rows), torch.tensor([1.0, 3.0]), rtol=1e-6)


def test_pixel_rows_are_subsampled_with_a_seed() -> None:
    cfg = FusionConfig(max_pixel_rows=50)
    a = OCSVMFuser(cfg).fit(_rows(30, 0), _rows(5000, 1))
    b = OCSVMFuser(cfg).fit(_rows(30, 0), _rows(5000, 1))
    assert np.array_equal(a.pixel_weights, b.pixel_weights)


@pytest.mark.parametrize("kind", ["ocsvm", "sum", "calibrated_max", "gated"])
def test_state_round_trip_gives_identical_scores(kind: str) -> None:
    fuser = build_fuser(FusionConfig(kind=kind)).fit(_rows(100, 0), _rows(500, 1))
    state = json.loads(json.dumps(fuser.save_state()))
    loaded = Fuser.from_state(state)
    rows = _rows(20, 3)
    assert type(loaded) is type(fuser)
    assert torch.equal(loaded.image_scores(rows), fuser.image_scores(rows))
    assert torch.equal(loaded.pixel_scores(rows), fuser.pixel_scores(rows))


def test_errors() -> None:
    fuser = SumFuser(FusionConfig(kind="sum"))
    with pytest.raises(RuntimeError, match="not fitted"):
        fuser.image_scores(_rows(2, 0))
    with pytest.raises(ValueError, match="columns"):
        fuser.fit(_rows(10, 0), _rows(10, 0)[:, :1])
    with pytest.raises(ValueError, match="fuser state"):
        Fuser.from_state({"kind": "sum"})


def _two_streams(rng: np.random.Generator, n_good: int, n_bad: int, noise_scale: float) -> tuple:
    """Image rows (N, 2) and pixel rows (N*64, 2): stream 0 sees the defects, stream 1 is pure noise.

    The noise stream has a larger typical value, as an uninformed hallucinated stream often has.
    """
    labels = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    informative = rng.normal(1.0, 0.1, labels.size) + 0.4 * labels
    noise = rng.normal(noise_scale, 0.3 * noise_scale, labels.size)
    masks = np.zeros((labels.size, 64), dtype=bool)
    masks[labels == 1, :8] = True
    pix_inf = rng.normal(1.0, 0.1, masks.shape) + 0.5 * masks
    pix_noise = rng.normal(noise_scale, 0.3 * noise_scale, masks.shape)
    image = torch.from_numpy(np.c_[informative, noise]).float()
    pixel = torch.from_numpy(np.stack([pix_inf, pix_noise], axis=-1).reshape(-1, 2)).float()
    return image, pixel, labels, masks.reshape(-1)


@pytest.mark.parametrize("noise_scale", [0.5, 3.0])
def test_calibrated_max_is_not_worse_than_the_informative_stream_when_the_other_is_noise(noise_scale: float) -> None:
    rng = np.random.default_rng(0)
    val_image, val_pixel, _, _ = _two_streams(rng, 30, 0, noise_scale)
    image, pixel, labels, masks = _two_streams(rng, 40, 40, noise_scale)
    best_i = auroc(image[:, 0].numpy(), labels, "image")
    best_p = auroc(pixel[:, 0].numpy(), masks, "pixel")
    fused = CalibratedMaxFuser(FusionConfig(kind="calibrated_max")).fit(val_image, val_pixel)
    assert auroc(fused.image_scores(image).numpy(), labels, "image") >= best_i - 0.02
    assert auroc(fused.pixel_scores(pixel).numpy(), masks, "pixel") >= best_p - 0.01
    if noise_scale > 1:  # the normalised sum lets the larger noise stream swamp the informative one
        summed = SumFuser(FusionConfig(kind="sum")).fit(val_image, val_pixel)
        assert auroc(summed.pixel_scores(pixel).numpy(), masks, "pixel") < best_p - 0.01


@pytest.mark.parametrize("calibration", ["zscore", "zscore_tail", "quantile"])
def test_calibration_maps_good_samples_to_a_common_scale(calibration: str) -> None:
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(np.c_[rng.normal(5, 2, 2000), rng.normal(0.1, 0.01, 2000)]).float()
    cfg = FusionConfig(kind="calibrated_max", image_calibration=calibration, calibration_quantile=0.99)
    fuser = CalibratedMaxFuser(cfg).fit(rows, rows)
    centre, spread = fuser.image_weights
    z = (rows.double().numpy() - centre) / spread
    assert np.allclose(np.median(z, axis=0), 0.0, atol=0.1)
    q = 0.0 if calibration == "quantile" else 1.0  # zscore(_tail, Gaussian tails): unit std; quantile: q99 -> 1
    assert np.allclose(z.std(axis=0) if q else np.quantile(z, 0.99, axis=0), 1.0, atol=0.05)
    constant = torch.ones(10, 2)
    flat = CalibratedMaxFuser(cfg).fit(constant, constant)
    assert torch.isfinite(flat.image_scores(constant)).all()


def _heavy_tailed_pair(rng: np.random.Generator, n_good: int, n_bad: int, sees: int, shift: float = 6.0) -> tuple:
    """Image rows (N, 2): stream ``sees`` shifts defects by ``shift`` good std; the other is heavy-tailed noise.

    The noise stream's good samples are Student-t (2 degrees of freedom): mostly within a
    Gaussian's range, with rare large excursions, like a hallucinated stream on unseen good parts.
    """
    labels = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    cols = [rng.standard_t(2, labels.size), rng.standard_t(2, labels.size)]
    cols[sees] = rng.normal(0.0, 1.0, labels.size) + shift * labels
    return torch.from_numpy(np.c_[cols[0], cols[1]]).float(), labels


def test_gated_keeps_the_first_stream_where_the_other_is_within_its_good_range() -> None:
    rng = np.random.default_rng(2)
    val, _ = _heavy_tailed_pair(rng, 30, 0, sees=0)
    rows, labels = _heavy_tailed_pair(rng, 200, 40, sees=0, shift=3.0)
    cfg = FusionConfig(kind="gated", image_gate=3.0, pixel_combine="gated")
    gated = GatedFuser(cfg).fit(val, val)
    centre, spread, gates, flags = gated.image_weights
    assert flags.tolist() == [0.0, 1.0]  # no roles given: the first column is the real sensor
    z = (rows.double().numpy() - centre) / spread
    inside = z[:, 1] <= gates[1]
    assert inside.sum() > 150  # most samples: the fused score is exactly the first stream's
    assert np.allclose(gated.image_scores(rows).numpy()[inside], z[inside, 0], atol=1e-5)
    first = auroc(rows[:, 0].numpy(), labels, "image")
    fused = auroc(gated.image_scores(rows).numpy(), labels, "image")
    maxed = auroc(CalibratedMaxFuser(FusionConfig(kind="calibrated_max")).fit(val, val).image_scores(rows).numpy(),
                  labels, "image")
    assert fused >= first - 0.02
    assert fused > maxed  # the maximum turns the noise stream's excursions into false alarms


def test_gated_lets_a_confident_second_stream_decide() -> None:
    rng = np.random.default_rng(3)
    val, _ = _heavy_tailed_pair(rng, 30, 0, sees=1)
    rows, labels = _heavy_tailed_pair(rng, 200, 40, sees=1)
    gated = GatedFuser(FusionConfig(kind="gated", image_gate=3.0)).fit(val, val)
    first = auroc(rows[:, 0].numpy(), labels, "image")
    fused = auroc(gated.image_scores(rows).numpy(), labels, "image")
    assert first < 0.7 < fused  # the first stream is blind; the second one's defects are far beyond its gate


def test_gated_pixel_max_equals_calibrated_max_and_config_is_checked() -> None:
    rng = np.random.default_rng(4)
    val = torch.from_numpy(rng.normal(size=(500, 2))).float()
    rows = torch.from_numpy(rng.normal(size=(50, 2))).float()
    gated = GatedFuser(FusionConfig(kind="gated", pixel_combine="max", pixel_offset=0.0)).fit(val, val)
    plain = CalibratedMaxFuser(FusionConfig(kind="calibrated_max")).fit(val, val)
    assert torch.allclose(gated.pixel_scores(rows), plain.pixel_scores(rows))
    with pytest.raises(ConfigError, match="image_combine"):
        FusionConfig(kind="gated", image_combine="mean")
    with pytest.raises(ConfigError, match="gate"):
        FusionConfig(kind="gated", image_gate=-1.0)


def test_gated_maximises_over_real_sensors_and_gates_only_hallucinated_streams() -> None:
    rng = np.random.default_rng(5)
    val, _ = _heavy_tailed_pair(rng, 30, 0, sees=1)
    rows, labels = _heavy_tailed_pair(rng, 200, 40, sees=1, shift=2.0)
    cfg = FusionConfig(kind="gated", image_gate=3.0, pixel_combine="gated")
    two_real = GatedFuser(cfg).fit(val, val, hallucinated=[False, False])
    plain = CalibratedMaxFuser(FusionConfig(kind="calibrated_max")).fit(val, val)
    # two real sensors (dual): the calibrated maximum, at image and pixel level
    assert torch.allclose(two_real.image_scores(rows), plain.image_scores(rows), atol=1e-5)
    assert torch.allclose(two_real.pixel_scores(rows), plain.pixel_scores(rows), atol=1e-5)
    # a second real sensor that sees a defect at 2 std is not held back by the gate ...
    assert auroc(two_real.image_scores(rows).numpy(), labels, "image") > 0.8
    # ... a hallucinated stream at 2 std is
    hal = GatedFuser(cfg).fit(val, val, hallucinated=[False, True])
    inside = ((rows.double().numpy() - hal.image_weights[0]) / hal.image_weights[1])[:, 1] <= 3.0
    z0 = (rows[:, 0].double().numpy() - hal.image_weights[0, 0]) / hal.image_weights[1, 0]
    assert np.allclose(hal.image_scores(rows).numpy()[inside], z0[inside], atol=1e-5)
    with pytest.raises(ValueError, match="real sensor"):
        GatedFuser(cfg).fit(val, val, hallucinated=[True, True])
    with pytest.raises(ValueError, match="3 score columns|flags for 2"):
        GatedFuser(cfg).fit(val, val, hallucinated=[False, True, True])


def test_gated_state_round_trips_and_a_three_row_state_loads_as_first_column_real() -> None:
    rng = np.random.default_rng(6)
    val = torch.from_numpy(rng.standard_t(2, size=(40, 2))).float()
    rows = torch.from_numpy(rng.standard_t(2, size=(60, 2))).float()
    fitted = GatedFuser(FusionConfig(kind="gated", pixel_combine="gated")).fit(val, val, [False, False])
    again = Fuser.from_state(fitted.save_state())
    assert torch.equal(again.image_scores(rows), fitted.image_scores(rows))
    old = GatedFuser(FusionConfig(kind="gated", pixel_combine="gated")).fit(val, val)  # first real, second gated
    state = old.save_state()
    state["image_weights"], state["pixel_weights"] = state["image_weights"][:3], state["pixel_weights"][:3]
    legacy = Fuser.from_state(state)
    assert legacy.image_weights.shape == (4, 2)
    assert torch.equal(legacy.image_scores(rows), old.image_scores(rows))
    assert torch.equal(legacy.pixel_scores(rows), old.pixel_scores(rows))


def test_student_t_gate_keeps_the_false_alarm_rate_of_its_sigma_level_for_few_samples() -> None:
    from scipy import stats

    rng = np.random.default_rng(7)
    n, trials, p = 6, 400_000, stats.norm.sf(3.0)
    fit = rng.normal(size=(trials, n))
    new = rng.normal(size=trials)
    z = (new - fit.mean(axis=1)) / fit.std(axis=1)  # as the zscore calibration computes it
    assert (z > 3.0).mean() > 10 * p  # 3 estimated std: a false alarm on about 3 % of good parts
    assert abs((z > student_t_gate(3.0, n)).mean() - p) < 0.3 * p  # the widened gate: about 0.13 %
    gates = [student_t_gate(3.0, k) for k in (2, 6, 20, 200, 100_000)]
    assert gates == sorted(gates, reverse=True) and abs(gates[-1] - 3.0) < 1e-3
    assert student_t_gate(3.0, 1) == 3.0  # nothing estimated: kept


def test_gated_fuser_widens_zscore_gates_only() -> None:
    rng = np.random.default_rng(8)
    val = torch.from_numpy(rng.normal(size=(6, 2))).float()
    pix = torch.from_numpy(rng.normal(size=(6000, 2))).float()
    fitted = GatedFuser(FusionConfig(kind="gated")).fit(val, pix, hallucinated=[False, True])
    assert fitted.image_weights[2].tolist() == pytest.approx([0.0, student_t_gate(3.0, 6)])
    assert fitted.pixel_weights[2].tolist() == pytest.approx([0.0, 1.0])  # quantile-calibrated pixels: as set
    plain = GatedFuser(FusionConfig(kind="gated", gate_correction="none")).fit(val, pix, hallucinated=[False, True])
    assert plain.image_weights[2].tolist() == pytest.approx([0.0, 3.0])
    with pytest.raises(ConfigError, match="gate_correction"):
        FusionConfig(kind="gated", gate_correction="bonferroni")


def test_gated_pixel_offset_raises_hallucinated_maps_only() -> None:
    rng = np.random.default_rng(9)
    val = torch.from_numpy(rng.normal(size=(6, 2))).float()
    pix = torch.from_numpy(rng.gamma(2.0, size=(6000, 2))).float()
    test = torch.from_numpy(rng.gamma(2.0, size=(500, 2)) * [1.0, 1.5]).float()
    base = GatedFuser(FusionConfig(kind="gated", pixel_offset=0.0)).fit(val, pix, hallucinated=[False, True])
    for offset in (0.5, -0.25):
        moved = GatedFuser(FusionConfig(kind="gated", pixel_offset=offset)).fit(val, pix, hallucinated=[False, True])
        centre, spread = base.pixel_weights[0], base.pixel_weights[1]
        z = (test.double().numpy() - centre) / spread
        expected = np.maximum(z[:, 0], z[:, 1] + offset)
        np.testing.assert_allclose(moved.pixel_scores(test).numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(moved.image_scores(val).numpy(), base.image_scores(val).numpy())
        # two real sensors (dual): no column moves
        real = GatedFuser(FusionConfig(kind="gated", pixel_offset=offset)).fit(val, pix, hallucinated=[False, False])
        np.testing.assert_allclose(real.pixel_weights, GatedFuser(FusionConfig(kind="gated", pixel_offset=0.0)).fit(
            val, pix, hallucinated=[False, False]).pixel_weights)
    with pytest.raises(ConfigError, match="pixel_offset"):
        FusionConfig(kind="gated", pixel_offset=float("inf"))


def test_field_max_spread_is_the_spread_of_part_maxima_under_an_exponential_tail() -> None:
    rng = np.random.default_rng(10)
    scale, pixels = 0.3, 5000
    maxima = (1.0 + rng.exponential(scale, size=(2000, pixels))).max(axis=1)
    six_parts = 1.0 + rng.exponential(scale, size=(6 * pixels, 1))
    spread = field_max_spread(six_parts)
    assert spread.shape == (1,)
    assert abs(spread[0] / maxima.std() - 1.0) < 0.15  # Gumbel: std = scale * pi / sqrt(6)


def _parts(rng: np.random.Generator, n: int, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (n,) and pixel scores (n, pixels) of good parts: a part's score is its pixels' maximum."""
    pix = rng.exponential(1.0, size=(n, pixels))
    return pix.max(axis=1), pix


def test_zscore_tail_does_not_trust_a_spread_that_near_equal_validation_scores_make_small() -> None:
    """Two real sensors; the second sees nothing of the defects. Its 6 validation parts happen to score
    nearly alike, so their std underestimates how far unseen good parts spread: under ``zscore`` those
    parts outrank defects that the first sensor alone ranks well; ``zscore_tail`` reads the spread off
    the pixels' tail and keeps the first sensor's ranking."""
    rng = np.random.default_rng(11)
    pool, pool_pix = _parts(rng, 60, 2000)
    pick = np.argsort(pool)[27:33]  # six near-equal maxima around the median
    val_first = rng.normal(0.0, 1.0, 6)
    val_image = torch.from_numpy(np.c_[val_first, pool[pick]]).float()
    val_pixel = torch.from_numpy(np.stack([rng.normal(0.0, 1.0, (6, 2000)), pool_pix[pick]], -1).reshape(-1, 2)).float()
    labels = np.r_[np.zeros(300), np.ones(100)].astype(int)
    second, _ = _parts(rng, labels.size, 2000)
    image = torch.from_numpy(np.c_[rng.normal(0.0, 1.0, labels.size) + 3.0 * labels, second]).float()
    best = auroc(image[:, 0].numpy(), labels, "image")
    results = {}
    for mode in ("zscore", "zscore_tail"):
        cfg = FusionConfig(kind="gated", image_calibration=mode)
        fuser = GatedFuser(cfg).fit(val_image, val_pixel, hallucinated=[False, False])
        results[mode] = auroc(fuser.image_scores(image).numpy(), labels, "image")
    assert results["zscore"] < best - 0.02, (best, results)
    assert results["zscore_tail"] >= best - 0.02, (best, results)


def test_zscore_tail_needs_pixel_rows_of_the_same_columns() -> None:
    from cmdiad.scoring.fusion import calibration_constants

    rows = np.random.default_rng(12).normal(size=(6, 2))
    with pytest.raises(ValueError, match="zscore_tail"):
        calibration_constants(rows, "zscore_tail", 0.999)
    with pytest.raises(ValueError, match="zscore_tail"):
        calibration_constants(rows, "zscore_tail", 0.999, np.zeros((100, 3)))
    with pytest.raises(ConfigError, match="image_calibration"):
        FusionConfig(image_calibration="tail")


def test_image_rows_with_missing_scores_calibrate_each_column_on_its_own_scores() -> None:
    """Cross-fitted training parts add scores to the real sensors' columns only (NaN elsewhere)."""
    rng = np.random.default_rng(13)
    val = rng.normal([1.0, 5.0], [0.1, 0.5], size=(6, 2))
    extra = np.c_[rng.normal(1.2, 0.3, 30), np.full(30, np.nan)]
    rows = torch.from_numpy(np.r_[val, extra])
    pix = torch.from_numpy(rng.normal(size=(6000, 2)))
    cfg = FusionConfig(kind="gated", image_calibration="zscore")
    fitted = GatedFuser(cfg).fit(rows, pix, hallucinated=[False, True])
    first = np.r_[val[:, 0], extra[:, 0]]
    np.testing.assert_allclose(fitted.image_weights[:2, 0], [first.mean(), first.std()])
    np.testing.assert_allclose(fitted.image_weights[:2, 1], [val[:, 1].mean(), val[:, 1].std()])
    # the hallucinated column's gate is widened for the 6 scores it has, not for 36
    assert fitted.image_weights[2, 1] == pytest.approx(student_t_gate(3.0, 6))
    for kind in ("sum", "ocsvm"):  # linear fusers learn from the complete rows
        partial = build_fuser(FusionConfig(kind=kind)).fit(rows, pix)
        complete = build_fuser(FusionConfig(kind=kind)).fit(torch.from_numpy(val), pix)
        np.testing.assert_allclose(partial.image_weights, complete.image_weights)
    with pytest.raises(ValueError, match="without any score"):
        GatedFuser(cfg).fit(torch.from_numpy(np.c_[val[:, 0], np.full(6, np.nan)]), pix)
    with pytest.raises(ValueError, match="no image row"):
        GatedFuser(cfg).fit(torch.from_numpy(np.c_[np.r_[val[:, 0], [np.nan] * 6], np.r_[[np.nan] * 6, val[:, 1]]]),
                            pix)
    with pytest.raises(ValueError, match="NaN or infinite"):
        GatedFuser(cfg).fit(torch.from_numpy(val), torch.full((10, 2), float("nan")))


def test_only_the_gated_fuser_names_how_its_pixels_take_a_hallucinated_map() -> None:
    from cmdiad.scoring.fusion import build_fuser, pixel_setting

    for kind in ("sum", "ocsvm", "calibrated_max"):
        assert build_fuser(FusionConfig(kind=kind)).pixel_setting == ""
    assert build_fuser(FusionConfig(kind="gated")).pixel_setting == "maximum, offset 0.5"
    assert pixel_setting(FusionConfig(kind="gated", pixel_combine="real")) == "main sensor only"
    assert pixel_setting(FusionConfig(kind="gated", pixel_combine="gated", pixel_gate=0.0, pixel_offset=0.0)) == (
        "added above gate 0, offset 0")


def test_a_pixel_weight_scales_the_hallucinated_map_and_only_it() -> None:
    rng = np.random.default_rng(6)
    val = torch.from_numpy(rng.normal(size=(500, 2))).float()
    rows = torch.from_numpy(rng.normal(size=(50, 2)) * 3).float()
    cfg = FusionConfig(kind="gated", pixel_combine="gated", pixel_gate=0.0, pixel_offset=0.0)
    full, weighted = (GatedFuser(replace(cfg, pixel_weight=w)).fit(val, val) for w in (1.0, 0.25))
    centre, spread = full.pixel_weights[0], full.pixel_weights[1]
    z = (rows.double().numpy() - centre) / spread
    expected = z[:, 0] + 0.25 * np.clip(z[:, 1], 0.0, None)
    assert np.allclose(weighted.pixel_scores(rows).numpy(), expected, atol=1e-5)
    assert "weight 0.25" in pixel_setting(weighted.config) and "weight" not in pixel_setting(full.config)
    left_out = GatedFuser(replace(cfg, pixel_weight=0.0)).fit(val, val)  # weight 0: the main map alone
    assert np.allclose(left_out.pixel_scores(rows).numpy(), z[:, 0], atol=1e-5)
    assert pixel_setting(left_out.config) == "main sensor only"
    with pytest.raises(ConfigError, match="pixel_weight"):
        FusionConfig(kind="gated", pixel_weight=-0.5)
