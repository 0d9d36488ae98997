"""Running moments of many tensors' entries, merged chunk by chunk (bank standardisation constants)."""

from __future__ import annotations

import torch


class RunningMoments:
    """Count, mean and sum of squared deviations of the entries of many tensors (Chan's merge, float64)."""

    def __init__(self) -> None:
        self.n, self._mean, self._m2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        """Merge the entries of ``x``, a few million at a time (bounded float64 working copies)."""
        flat = x.reshape(-1)
        for i in range(0, flat.numel(), 1 << 22):
            self._merge(flat[i : i + (1 << 22)].double())

    def _merge(self, x: torch.Tensor) -> None:
        k = x.numel()
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        delta, total = mean - self._mean, self.n + k
        self._mean += delta * k / total
        self._m2 += m2 + delta * delta * self.n * k / total
        self.n = total

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        """Unbiased standard deviation (``torch.std``'s default)."""
        return (self._m2 / (self.n - 1)) ** 0.5 if self.n > 1 else 0.0
