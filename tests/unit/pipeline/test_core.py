"""DetectorCore on tensors alone: no files, no extractors."""

from __future__ import annotations

from pathlib import Path

import torch

from cmdiad.config import CoresetConfig, DataConfig, DetectorConfig, FusionConfig, MemoryConfig
from cmdiad.memory.bank import MemoryBank
from cmdiad.pipeline.core import DetectorCore, FusionState
from cmdiad.types import PatchFeatures

GRID, SIZE = (6, 6), (24, 24)


def _feats(n: int, c: int, seed: int, anomalous: bool = False) -> PatchFeatures:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *GRID, generator=g)
    if anomalous:
        x[:, :, 2:4, 1:3] += 4.0
    return PatchFeatures(x, torch.ones(n, *GRID, dtype=torch.bool))


def _core() -> DetectorCore:
    cfg = DetectorConfig(method="dual", main="both", data=DataConfig(image_size=SIZE),
                         memory=MemoryConfig(coreset=CoresetConfig(ratio=0.5)),
                         fusion=FusionConfig(kind="calibrated_max", fit_on="validation"))
    core = DetectorCore(cfg, SIZE)
    for name, c, seed in (("xyz", 5, 1), ("rgb", 7, 2)):
        bank = MemoryBank(cfg.memory)
        bank.add(_feats(6, c, seed))
        bank.finalize()
        core.banks[name] = bank
    good = {"xyz": _feats(4, 5, 3), "rgb": _feats(4, 7, 4)}
    image_rows, maps = core.columns(core.stream_scores(good))
    core.fusion.fit(image_rows, maps.reshape(-1, 2), [s.hallucinated for s in core.streams])
    return core


def test_tensors_in_scores_out() -> None:
    core = _core()
    feats = {"xyz": _feats(3, 5, 10, anomalous=True), "rgb": _feats(3, 7, 11)}
    scores = core(feats)
    assert scores.image_score.shape == (3,) and scores.anomaly_map.shape == (3, *SIZE)
    amap = scores.anomaly_map
    inside, outside = amap[:, 8:16, 4:12].mean(), amap[:, :, 16:].mean()  # the shifted xyz patches
    assert inside > outside
    clean = core({"xyz": _feats(3, 5, 12), "rgb": _feats(3, 7, 13)})
    assert scores.image_score.min() > clean.image_score.max()


def test_state_dict_rebuilds_an_identical_core() -> None:
    core = _core()
    state = core.state_dict()
    assert set(state) == {"banks.xyz.bank", "banks.xyz.standardisation", "banks.rgb.bank",
                          "banks.rgb.standardisation", *(f"fusion.{k}" for k in core.fusion.meta()["arrays"])}
    fresh = DetectorCore(core.config, core.image_size)
    for name, bank in core.banks.items():
        fresh.banks[name] = MemoryBank.empty(bank.config, *bank.bank.shape)
    fresh.fusion = FusionState.from_saved(core.fusion.meta(), state, "fusion.", Path("x"))
    fresh.load_state_dict(state, strict=True)
    feats = {"xyz": _feats(2, 5, 20, anomalous=True), "rgb": _feats(2, 7, 21)}
    a, b = core(feats), fresh(feats)
    assert torch.equal(a.image_score, b.image_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_loading_fusion_buffers_changes_the_fuser() -> None:
    core, other = _core(), _core()
    state = other.state_dict()
    key = next(k for k in state if k.startswith("fusion."))
    state[key] = state[key] * 2.0  # e.g. doubled spreads: the loaded fuser must use them
    core.load_state_dict(state, strict=True)
    name = key.split(".", 1)[1]
    assert torch.allclose(getattr(core.fusion, name), state[key])
    assert torch.allclose(torch.as_tensor(core.fusion.fuser.save_state()[name], dtype=torch.float64), state[key])


def test_map_max_image_score_is_each_stream_maps_maximum() -> None:
    """``memory.image_score = "map_max"``: a stream's image score is its blurred map's maximum,
    while the maps stay those of ``patch_max``."""
    from dataclasses import replace

    core = _core()
    feats = {"xyz": _feats(3, 5, 10, anomalous=True), "rgb": _feats(3, 7, 11)}
    before = core.stream_scores(feats)
    core.config = replace(core.config, memory=replace(core.config.memory, image_score="map_max"))
    after = core.stream_scores(feats)
    for name, (image, amap) in after.items():
        assert torch.equal(amap, before[name][1])
        assert torch.equal(image, amap.reshape(3, -1).amax(dim=1))
        assert not torch.allclose(image, before[name][0])  # a different readout than the patch maximum
