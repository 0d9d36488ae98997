"""Encoder: a second run on the same on-disk cache decodes no file; masks read mask files only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmdiad.config import DataConfig, PointFeatureConfig
from cmdiad.errors import DatasetError
from cmdiad.features.cache import FeatureCache
from cmdiad.features.fpfh import build_fpfh
from cmdiad.io import mvtec3d
from cmdiad.io.image import write_mask
from cmdiad.io.mvtec3d import list_records, load_sample
from cmdiad.pipeline.encoder import Encoder
from cmdiad.preprocessing.image import resize_mask
from cmdiad.synthetic.generator import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enc")
    generate_dataset(root, SynthConfig(categories=("ring",), image_size=(48, 48), train=3, validation=0,
                                       test_good=1, test_per_defect=1, seed=3))
    return root


def _records(root: Path):
    return list_records(root, "ring", "train") + list_records(root, "ring", "test")


def _encoder(cache: FeatureCache, **kw) -> Encoder:
    cfg = PointFeatureConfig(name="fpfh", patch_stride=8)
    return Encoder({"xyz": build_fpfh(cfg)}, {"xyz": cfg}, DataConfig(image_size=(32, 32)),
                   cache=cache, batch_size=2, **kw)


class _Counter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {"read_rgb": 0, "read_xyz": 0, "patch_features": 0}
        for name in ("read_rgb", "read_xyz"):
            monkeypatch.setattr(mvtec3d, name, self._wrap(name, getattr(mvtec3d, name)))
        from cmdiad.features.fpfh import FPFHExtractor

        monkeypatch.setattr(FPFHExtractor, "patch_features", self._wrap("patch_features", FPFHExtractor.patch_features))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return counted


def test_second_run_on_a_disk_cache_reads_no_point_cloud(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    records = _records(dataset)
    first = _encoder(FeatureCache(tmp_path / "cache"))
    feats = first.features(records, "xyz")
    inputs = first.inputs(records, "xyz")
    assert first.ms_per_sample["xyz"] > 0
    counter = _Counter(monkeypatch)
    second = _encoder(FeatureCache(tmp_path / "cache"))
    again = second.features(records, "xyz")
    assert torch.equal(again.features, feats.features) and torch.equal(again.valid, feats.valid)
    assert torch.equal(second.inputs(records, "xyz"), inputs)
    assert second.measure(records[:2], "xyz") == pytest.approx(first.ms_per_sample["xyz"])
    assert second.ms_per_sample["xyz"] == pytest.approx(first.ms_per_sample["xyz"])
    second.masks(records)
    assert counter.calls == {"read_rgb": 0, "read_xyz": 0, "patch_features": 0}


def test_first_run_reads_each_file_once(dataset: Path, monkeypatch) -> None:
    records = _records(dataset)
    counter = _Counter(monkeypatch)
    enc = _encoder(FeatureCache(None))
    enc.features(records, "xyz")
    enc.inputs(records, "xyz")  # e.g. an i2f row: taken from the inputs kept at extraction
    enc.features(records, "xyz")
    assert counter.calls["read_xyz"] == len(records)
    assert counter.calls["patch_features"] == -(-len(records) // 2)  # one call per batch of 2
    lean = _encoder(FeatureCache(None), keep_inputs=False)
    assert torch.equal(lean.inputs(records, "xyz"), enc.inputs(records, "xyz"))
    lean.inputs(records, "xyz")
    assert counter.calls["read_xyz"] == 3 * len(records)  # nothing kept: read on every call


def test_masks_decode_only_mask_files_and_match_load_sample(dataset: Path, monkeypatch) -> None:
    records = _records(dataset)
    expected = torch.stack([resize_mask(load_sample(r, ("xyz",)).mask, (32, 32)) for r in records])
    counter = _Counter(monkeypatch)
    got = _encoder(FeatureCache(None)).masks(records)
    assert torch.equal(got, expected) and got.any()
    assert counter.calls["read_rgb"] == counter.calls["read_xyz"] == 0


def test_mask_of_another_size_is_an_error_naming_it(dataset: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    bad = next(r for r in list_records(root, "ring", "test") if r.label == 1)
    write_mask(bad.gt_path, np.ones((20, 20), dtype=bool))
    with pytest.raises(DatasetError, match=str(bad.gt_path.name)):
        _encoder(FeatureCache(None)).masks([bad])


@pytest.mark.parametrize("workers", [1, 3])
def test_read_workers_do_not_change_inputs(dataset: Path, workers: int) -> None:
    records = _records(dataset)
    ref = _encoder(FeatureCache(None), read_workers=1).inputs(records, "xyz")
    got = _encoder(FeatureCache(None), read_workers=workers).inputs(records, "xyz")
    assert torch.equal(ref, got)


def test_staged_and_throttled_progress() -> None:
    from cmdiad.pipeline.encoder import staged, throttled

    calls: list[tuple[str, int, int]] = []
    named = staged(lambda *a: calls.append(a), "coreset xyz")
    named("coreset", 1, 3)
    assert calls == [("coreset xyz", 1, 3)]
    assert staged(None, "x") is None and throttled(None) is None
    calls.clear()
    fast = throttled(lambda *a: calls.append(a), min_interval=60.0)
    for i in range(1, 1001):
        fast("coreset", i, 1000)
    assert calls == [("coreset", 1, 1000), ("coreset", 1000, 1000)]  # first and last of the stage pass


def test_float16_cache_gives_the_same_features_on_both_runs(dataset: Path, tmp_path: Path) -> None:
    records = _records(dataset)[:3]
    first = _encoder(FeatureCache(tmp_path / "c16", dtype=torch.float16)).features(records, "xyz")
    second = _encoder(FeatureCache(tmp_path / "c16", dtype=torch.float16)).features(records, "xyz")
    assert first.features.dtype == torch.float32 and torch.equal(first.features, second.features)
    exact = _encoder(FeatureCache(None)).features(records, "xyz")
    torch.testing.assert_close(first.features, exact.features, rtol=1e-3, atol=1e-3)
