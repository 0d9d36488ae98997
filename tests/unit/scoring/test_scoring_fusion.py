"""Fusers: positive OCSVM coefficients, fallback to the normalised sum, state round-trip."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from cmdiad.config import FusionConfig
from cmdiad.scoring.fusion import FUSERS, Fuser, OCSVMFuser, SumFuser, build_fuser


def _rows(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.abs(rng.normal([2.0, 0.5], [0.5, 0.1], size=(n, 2)))).float()


def test_registry_and_builder() -> None:
    assert FUSERS.names() == ["ocsvm", "sum"]
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


@pytest.mark.parametrize("kind", ["ocsvm", "sum"])
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
