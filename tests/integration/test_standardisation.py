"""m3dm standardisation: mixed constants for two-stream methods, each bank's own for single banks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, MemoryConfig
from cmdiad.io.mvtec3d import list_records
from cmdiad.memory.bank import MemoryBank
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.persist import build_encoder


@pytest.mark.parametrize("method", ["rgb", "xyz"])
def test_single_bank_rows_use_their_own_constants_and_dual_the_mixed_ones(tiny_dataset: Path, method: str) -> None:
    mem = MemoryConfig(coreset=CoresetConfig(ratio=0.5), standardize="m3dm")
    train = list_records(tiny_dataset, "ring", "train")
    base = DetectorConfig(data=DataConfig(image_size=(64, 64)), memory=mem)
    encoder = build_encoder(base, device="cpu")
    single = Detector(DetectorConfig(method=method, main=method, data=base.data, memory=mem), encoder)
    single.fit(train)
    dual = Detector(DetectorConfig(method="dual", main="both", data=base.data, memory=mem), encoder)
    dual.fit(train)
    feats = encoder.features(train, method)
    own_std, own_mean = torch.std_mean(feats.features.permute(0, 2, 3, 1)[feats.valid])
    assert single.banks[method].stats == pytest.approx((float(own_mean), float(own_std)), rel=1e-5)
    xyz, rgb = encoder.features(train, "xyz"), encoder.features(train, "rgb")
    mixed = (float(xyz.features.permute(0, 2, 3, 1)[xyz.valid].mean()),
             float(rgb.features.permute(0, 2, 3, 1)[rgb.valid].std()))
    assert dual.banks["xyz"].stats == pytest.approx(mixed, rel=1e-5)
    assert dual.banks["rgb"].stats == pytest.approx(mixed, rel=1e-5)
    assert single.banks[method].stats != pytest.approx(mixed, rel=1e-3)


@pytest.mark.parametrize("method", ["dual", "f2f_rgb"])
def test_fit_feeds_banks_in_chunks_with_the_banks_of_a_whole_set_fit(
    tiny_dataset: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Banks are fed a few samples at a time, so a fit never holds a second copy of every training
    feature; the banks, constants and scores equal those of one chunk holding the whole set."""
    import cmdiad.pipeline.detector as detector_module
    from cmdiad.config import DistillConfig
    from cmdiad.pipeline.streams import parse_row

    mem = MemoryConfig(coreset=CoresetConfig(ratio=0.5), standardize="m3dm")
    train = list_records(tiny_dataset, "ring", "train")
    test = list_records(tiny_dataset, "ring", "test")
    name, main = parse_row(method)
    cfg = DetectorConfig(method=name, main=main, data=DataConfig(image_size=(64, 64)), memory=mem,
                         distill=DistillConfig(epochs=2, width=4, trunk_width=4, trunk_blocks=1))

    def fit(chunk_batches: int) -> tuple[Detector, int]:
        monkeypatch.setattr(detector_module, "FIT_CHUNK_BATCHES", chunk_batches)
        encoder = build_encoder(cfg, device="cpu")
        encoder.batch_size = 2
        largest = [0]
        add = MemoryBank.add

        def spy(bank, pf):
            largest[0] = max(largest[0], pf.features.shape[0])
            return add(bank, pf)

        monkeypatch.setattr(MemoryBank, "add", spy)
        torch.manual_seed(0)
        det = Detector(cfg, encoder)
        det.fit(train)
        return det, largest[0]

    chunked, largest = fit(1)
    whole, largest_whole = fit(len(train))
    assert len(train) > 2 and largest == 2 and largest_whole == len(train)
    for s in chunked.banks:
        assert torch.equal(chunked.banks[s].bank, whole.banks[s].bank)
        assert chunked.banks[s].stats == pytest.approx(whole.banks[s].stats, rel=1e-9)
    a, b = chunked.score(test), whole.score(test)
    assert torch.equal(a.image_score, b.image_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_fusion_on_training_samples_hallucinates_them_once(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``fusion.fit_on = train`` the hallucinated stream's training features are searched twice
    (bank build, then fusion fit) but computed once."""
    from cmdiad.config import DistillConfig, FusionConfig

    train = list_records(tiny_dataset, "ring", "train")
    cfg = DetectorConfig(method="f2f", main="rgb", data=DataConfig(image_size=(64, 64)),
                         memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
                         fusion=FusionConfig(kind="calibrated_max", fit_on="train"),
                         distill=DistillConfig(epochs=2, width=4, trunk_width=4, trunk_blocks=1))
    hallucinated = [0]
    original = Detector._hallucinate

    def counted(self, main, inputs):
        hallucinated[0] += main.features.shape[0]
        return original(self, main, inputs)

    monkeypatch.setattr(Detector, "_hallucinate", counted)
    det = Detector(cfg, build_encoder(cfg, device="cpu"))
    searched = []
    score_bank_only = det._score_bank_only
    det._score_bank_only = lambda s, pf, progress=None: (searched.append((s.name, pf.features.shape[0])),
                                                         score_bank_only(s, pf, progress))[1]
    det.fit(train)
    hall = det.core.hallucinated.name
    assert sum(n for name, n in searched if name == hall) == len(train)  # the fusion fit's search
    assert hallucinated[0] == len(train)  # for the bank; the fusion fit reuses those features
