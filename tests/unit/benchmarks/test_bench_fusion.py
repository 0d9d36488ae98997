"""bench_fusion: scoring a null-twin set by the real set's fit refuses a set that does not pair with it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_fusion as bf  # noqa: E402


def _scores(defects: list[str], image: list[float]) -> dict[str, np.ndarray]:
    n = len(defects)
    return {"defects": np.array(defects), "test_image": np.array(image)[:, None],
            "test_maps": np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2, 1)}  # fmt: skip


def test_twin_scores_checks_the_pairing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = _scores(["good", "bump"], [0.1, 0.9])
    sets = {
        "twin": _scores(["good", "bump"], [0.1, 0.2]),  # the defect part scores as a good one: fine
        "other_parts": _scores(["good", "dent"], [0.1, 0.2]),
        "other_goods": _scores(["good", "bump"], [0.3, 0.2]),
    }
    monkeypatch.setattr(bf, "stream_scores", lambda root, c, row, twins=None: sets[twins.name] if twins else real)
    twin = bf.twin_scores(tmp_path, tmp_path / "twin", "c", "f2f_rgb")
    assert twin["test_image"][1, 0] == pytest.approx(0.2)
    with pytest.raises(SystemExit, match="test parts differ"):
        bf.twin_scores(tmp_path, tmp_path / "other_parts", "c", "f2f_rgb")
    with pytest.raises(SystemExit, match="good test parts score differently"):
        bf.twin_scores(tmp_path, tmp_path / "other_goods", "c", "f2f_rgb")


def test_summary_counts_shortfalls_beyond_the_exact_prior_only_with_twins() -> None:
    # [data, category, row, defect, n_good, n_defect, best I, best P, rule I, rule P]: both fall 0.1 short
    table = [["s", "c", "f2f_rgb", "bump", 12, 6, 0.95, 0.95, 0.85, 0.85],
             ["s", "c", "f2f_rgb", "dent", 12, 6, 0.95, 0.95, 0.85, 0.85]]  # fmt: skip
    priors = [(0.5, 0.5), (0.95, 0.95)]  # the second case's better stream scores its twins the same
    with_twins = next(line for line in bf.summary(table, ["r"], priors) if line.startswith("| s | MTFI |"))
    assert with_twins.rstrip(" |").split(" | ")[-2:] == ["1/1", "1/1"]
    assert with_twins.split(" | ")[6:8] == ["2/2", "2/2"]  # both short, both informative beyond chance
    plain = next(line for line in bf.summary(table, ["r"]) if line.startswith("| s | MTFI |"))
    assert len(plain.split(" | ")) == len(with_twins.split(" | ")) - 2


def test_banks_are_shared_within_one_config_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cmdiad.synthetic.generator import SynthConfig, generate_dataset

    generate_dataset(tmp_path, SynthConfig(categories=("dome",), image_size=(32, 32), train=1, validation=0,
                                           test_good=1, test_per_defect=1))
    monkeypatch.setattr(bf, "_SHARED", {})
    monkeypatch.setattr(bf, "_SETS", [])
    first = bf.shared_banks(tmp_path, "dome", bf._config(tmp_path))
    assert bf.shared_banks(tmp_path, "dome", bf._config(tmp_path)) is first
    bf.use_sets(["distill.seed=1"])  # another fit: its banks are not the first config's
    assert bf._config(tmp_path).detector.distill.seed == 1
    assert bf.shared_banks(tmp_path, "dome", bf._config(tmp_path)) is not first
    bf.use_sets([])
    assert bf.shared_banks(tmp_path, "dome", bf._config(tmp_path)) is first


def test_preset_rule_is_the_presets_fuser() -> None:
    from cmdiad.config import FusionConfig
    from cmdiad.pipeline.presets import preset

    rule = bf.preset_rule()
    assert rule.startswith("gated:") and "pixel_combine=gated" in rule
    assert bf.fuser_config(rule) == FusionConfig(**preset("default")["detector"]["fusion"])
    assert bf.fuser_config(bf.preset_rule("paper")) == FusionConfig(**{**preset("paper")["detector"]["fusion"],
                                                                       "fit_on": "validation"})


def test_a_rule_parses_a_boolean_field_both_ways() -> None:
    assert bf.fuser_config("gated:pixel_weight_by_fidelity=True").pixel_weight_by_fidelity is True
    assert bf.fuser_config("gated:labelled_choice=false").labelled_choice is False  # bool("false") would be True
    with pytest.raises(ValueError, match="labelled_choice"):
        bf.fuser_config("gated:labelled_choice=0")
