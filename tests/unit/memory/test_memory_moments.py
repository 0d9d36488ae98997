"""RunningMoments: the mean and unbiased std of many tensors' entries, merged chunk by chunk."""

from __future__ import annotations

import pytest
import torch

from cmdiad.memory.moments import RunningMoments


def test_merged_moments_equal_those_of_the_concatenation() -> None:
    gen = torch.Generator().manual_seed(3)
    parts = [torch.randn(n, 7, generator=gen) * s + o for n, s, o in ((5, 1.0, 0.0), (1, 3.0, 10.0), (300, 0.1, -2.0))]
    m = RunningMoments()
    for p in [*parts, torch.empty(0, 7)]:
        m.add(p)
    whole = torch.cat(parts).double()
    assert m.n == whole.numel()
    assert m.mean == pytest.approx(float(whole.mean()), rel=1e-12)
    assert m.std == pytest.approx(float(whole.std()), rel=1e-12)


def test_one_entry_has_no_spread() -> None:
    m = RunningMoments()
    m.add(torch.tensor([2.5]))
    assert (m.mean, m.std) == (2.5, 0.0)
