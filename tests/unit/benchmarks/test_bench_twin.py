"""bench_twin: the skill over a null twin, how much each defect changes each modality, and the good-part check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_twin as bt  # noqa: E402

from cmdiad.synthetic.generator import SynthConfig, generate_dataset  # noqa: E402

SMALL = {"categories": ("dome",), "image_size": (48, 48), "train": 1, "validation": 0, "test_good": 1,
         "test_per_defect": 2}  # fmt: skip


def test_skill_is_zero_at_the_prior_and_one_when_perfect() -> None:
    out = bt.skill(np.array([0.8, 1.0, 0.9]), np.array([0.8, 0.8, 0.6]))
    assert np.allclose(out, [0.0, 1.0, 0.75])


def test_cue_strength_sees_each_defect_only_in_its_modalities(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "set", SynthConfig(**SMALL, geometry_shading=0.5))
    generate_dataset(tmp_path / "twin", SynthConfig(**SMALL, null_twins=True))
    cues = bt.cue_strength(tmp_path / "set", tmp_path / "twin")
    assert sorted(cues) == ["bump", "crack", "dent", "hole", "stain"]
    assert cues["stain"][0] > 10 and cues["stain"][1] == 0  # appearance only
    for kind in ("bump", "dent"):  # geometry, shading half let through: a few grey levels
        assert 0 < cues[kind][0] < cues["crack"][0] and cues[kind][1] > 100
    generate_dataset(tmp_path / "dark", SynthConfig(**SMALL))
    assert bt.cue_strength(tmp_path / "dark", tmp_path / "twin")["bump"][0] == 0  # the default: invisible


def _run(path: Path, good_maps: np.ndarray) -> Path:
    (path / "raw" / "rgb").mkdir(parents=True)
    labels = np.array([0, 1, 0])
    maps = np.stack([good_maps[0], np.ones((4, 4)), good_maps[1]]).astype(np.float32)
    np.savez(path / "raw" / "rgb" / "c.npz", labels=labels, image_scores=maps.mean((1, 2)),
             anomaly_maps=maps, paths=np.array(["good/0", "bump/0", "good/1"]))
    return path


def test_good_part_difference_compares_the_good_parts_only(tmp_path: Path) -> None:
    good = np.random.default_rng(0).random((2, 4, 4))
    a, b = _run(tmp_path / "a", good), _run(tmp_path / "b", good)
    assert bt.good_part_difference(a, b) == 0.0
    c = _run(tmp_path / "c", good + 0.25)
    assert bt.good_part_difference(a, c) == pytest.approx(0.25)


def test_check_settings_refuses_a_twin_run_that_is_not_one(tmp_path: Path) -> None:
    def run(name: str, **settings) -> Path:
        (tmp_path / name).mkdir()
        synthetic = {"seed": 1, "image_size": [48, 48], "categories": ["dome"], "null_twins": False} | settings
        (tmp_path / name / "run.json").write_text(json.dumps({"synthetic": synthetic}))
        return tmp_path / name

    twin, real = run("twin", null_twins=True), run("real")
    bt.check_settings(twin, real)
    with pytest.raises(SystemExit, match="not generated with --null-twins"):
        bt.check_settings(real, real)
    with pytest.raises(SystemExit, match="seed, size or counts differ"):
        bt.check_settings(twin, run("other", seed=2))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text("{}")  # runs before the settings were recorded: no check
    bt.check_settings(tmp_path / "old", real)


def test_run_command_gives_the_size_the_run_was_made_at(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"command": "cmdiad demo --data D --out R"}))
    assert bt.run_command(tmp_path) == "`cmdiad demo --data D --out R`"  # no config.json: no size
    (tmp_path / "config.json").write_text(json.dumps({"detector": {"data": {"image_size": [192, 176]}}}))
    assert bt.run_command(tmp_path) == "`cmdiad demo --data D --out R` (at 192x176 px)"
    assert bt.run_command(tmp_path / "missing") == f"`{tmp_path / 'missing'}`"
