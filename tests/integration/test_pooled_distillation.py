"""Pooled distillation: one distiller per MTFI row trained on every category, saved once, reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmdiad.cli import main
from cmdiad.distill.train import load_distiller
from cmdiad.pipeline import runs
from cmdiad.synthetic.generator import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two")
    generate_dataset(root, SynthConfig(categories=("ring", "tile"), image_size=(48, 48), train=4, validation=2,
                                       test_good=2, test_per_defect=1, defects=("bump", "stain"), seed=2))
    return root


def test_one_distiller_serves_every_category_and_a_resumed_run_reuses_it(
    two_categories: Path, tmp_path: Path, tiny_sets, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    args = ["experiment", str(two_categories), "--out", str(out), "--methods", "f2f_rgb", *tiny_sets,
            "--set", "data.image_size=[48,48]", "--set", "distill.pooled=true"]
    trained: list[int] = []
    original = runs.Detector.train_distiller

    def spy(self, train, progress=None):
        trained.append(len(train))
        return original(self, train, progress)

    monkeypatch.setattr(runs.Detector, "train_distiller", spy)
    assert main(args) == 0
    assert trained == [8]  # once, on the 4 training samples of each of the two categories
    meta = json.loads((out / "distillers" / "f2f_rgb" / "pooled.json").read_text())
    assert meta["categories"] == ["ring", "tile"] and meta["paired_samples"] == 8
    assert load_distiller(out / "distillers" / "f2f_rgb").kind == "f2f"
    records = json.loads((out / "results.json").read_text())
    assert {r["category"] for r in records} == {"ring", "tile"}
    assert all(-1.0 <= r["fidelity_cosine"] <= 1.0 and r["fidelity_rel_l2"] >= 0 for r in records)
    assert all(r["fidelity_r2_se"] >= 0 for r in records)  # the jackknife over the validation parts
    # An interrupted run resumes with the saved distiller instead of training it again.
    (out / "raw" / "f2f_rgb" / "tile.npz").unlink()
    assert main(args) == 0
    assert trained == [8]
