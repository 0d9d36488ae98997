"""A row scores a part from the sensors it names only: on a defect its sensors cannot see, a part
and its null twin (the same part rendered without the defect) get the same scores and maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, DistillConfig, FusionConfig, MemoryConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder
from cmdiad.pipeline.runs import category_splits
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

SET = {"categories": ("ring",), "image_size": (64, 64), "train": 6, "validation": 3, "test_good": 2,
       "test_per_defect": 1, "seed": 1}  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("twins")
    generate_dataset(root / "real", SynthConfig(**SET))
    generate_dataset(root / "twin", SynthConfig(**SET, null_twins=True))
    return root / "real", root / "twin"


@pytest.mark.parametrize(("method", "main", "unseen", "seen"), [("f2f", "rgb", ("bump", "dent"), "crack"),
                                                                 ("i2f", "xyz", ("stain",), "hole")])
def test_a_defect_the_rows_sensors_cannot_see_scores_as_its_null_twin(sets, method, main, unseen, seen) -> None:
    real, twin = sets
    cfg = DetectorConfig(method=method, main=main, data=DataConfig(image_size=(64, 64)),
                         memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
                         distill=DistillConfig(epochs=1, width=8, trunk_width=4, trunk_blocks=1, val_fraction=0.0),
                         fusion=FusionConfig(kind="gated", fit_on="validation"))
    train, val, _ = category_splits(real, "ring", with_validation=True)
    torch.manual_seed(0)
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    det.fit(train, validation=val)

    def scores(root: Path, defect: str):
        records = [r for r in list_records(root, "ring", "test") if r.defect == defect]
        assert len(records) == 1 and records[0].gt_path is not None
        return det.score(records)

    for defect in unseen:
        a, b = scores(real, defect), scores(twin, defect)
        torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)
        torch.testing.assert_close(a.image_score, b.image_score, rtol=0, atol=0)
    a, b = scores(real, seen), scores(twin, seen)  # a defect the sensor does see changes the map
    assert not torch.equal(a.anomaly_map, b.anomaly_map)
