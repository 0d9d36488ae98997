"""Golden regression: per-stream image scores and anomaly maps of tiny fixed banks (rtol 1e-5).

A failure means scoring changed. If the change is intended, regenerate with
``PYTHONPATH=src python tests/golden/make_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import numpy as np
import pytest
from make_golden import CASES, GOLDEN, compute


@pytest.fixture(scope="module")
def current() -> dict[str, np.ndarray]:
    return compute()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("what", ["image_score", "patch_scores", "anomaly_map"])
def test_scores_match_the_golden_file(current, golden, case: str, what: str) -> None:
    key = f"{case}_{what}"
    np.testing.assert_allclose(current[key], golden[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_golden_cases_are_not_degenerate(golden) -> None:
    for case in CASES:
        image = golden[f"{case}_image_score"]
        assert image[1:].min() > image[0]  # the anomalous queries score higher than the clean one
        amap = golden[f"{case}_anomaly_map"]
        assert amap.std() > 0 and not np.allclose(amap, np.kron(golden[f"{case}_patch_scores"], np.ones((4, 4))))
