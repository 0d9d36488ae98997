from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from cmdiad.config import PointFeatureConfig, RGBFeatureConfig
from cmdiad.errors import DatasetError
from cmdiad.features.cache import FeatureCache, extractor_key, sample_key
from cmdiad.types import PatchFeatures


class Counter:
    """A ``compute`` callable that counts its calls."""

    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self) -> PatchFeatures:
        self.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        valid = torch.rand(1, 3, 4, generator=g) > 0.3
        return PatchFeatures(torch.randn(1, 5, 3, 4, generator=g), valid)


@pytest.mark.parametrize("on_disk", [False, True])
def test_second_call_does_not_recompute(on_disk: bool, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c" if on_disk else None)
    compute = Counter()
    first = cache.get_or_compute("ek", "sample-a", compute)
    second = cache.get_or_compute("ek", "sample-a", compute)
    assert compute.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(second.features, compute().features)
    assert torch.equal(second.valid, first.valid) and second.features.dtype == torch.float32
    assert cache.get_or_compute("ek", "sample-b", compute) is not None and compute.calls == 3
    assert cache.get_or_compute("other-ek", "sample-a", compute) is not None and compute.calls == 4
    assert (tmp_path / "c" / "ek").is_dir() == on_disk


def test_entries_survive_a_new_cache_object(tmp_path: Path) -> None:
    FeatureCache(tmp_path).get_or_compute("ek", "s", Counter(seed=3))
    compute = Counter()
    got = FeatureCache(tmp_path).get_or_compute("ek", "s", compute)
    assert compute.calls == 0
    torch.testing.assert_close(got.features, Counter(seed=3)().features)


def test_put_and_get(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    assert cache.get("ek", "s") is None
    pf = Counter()()
    cache.put("ek", "s", pf)
    torch.testing.assert_close(cache.get("ek", "s").features, pf.features)


def test_float16_storage_returns_float32(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, dtype=torch.float16)
    cache.get_or_compute("ek", "s", Counter())
    got = cache.get_or_compute("ek", "s", Counter())
    assert got.features.dtype == torch.float32
    torch.testing.assert_close(got.features, Counter()().features, rtol=1e-3, atol=1e-3)
    full = FeatureCache(tmp_path / "f32")
    full.get_or_compute("ek", "s", Counter())
    saved = full.path_of("ek", "s").stat().st_size - cache.path_of("ek", "s").stat().st_size
    assert saved >= 5 * 3 * 4 * 2 - 8  # two bytes per element, give or take header padding


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_corrupt_file_is_recomputed_with_warning(content: bytes, tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute("ek", "s", Counter())
    cache.path_of("ek", "s").write_bytes(content)
    compute = Counter()
    with caplog.at_level(logging.WARNING, logger="cmdiad.features.cache"):
        got = cache.get_or_compute("ek", "s", compute)
    assert compute.calls == 1 and "unreadable" in caplog.text
    torch.testing.assert_close(got.features, compute().features)
    compute2 = Counter()
    cache.get_or_compute("ek", "s", compute2)
    assert compute2.calls == 0  # the rewritten entry is good again


def test_entry_of_another_sample_is_not_used(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute("ek", "a", Counter(seed=1))
    os.replace(cache.path_of("ek", "a"), cache.path_of("ek", "b"))
    compute = Counter(seed=2)
    got = cache.get_or_compute("ek", "b", compute)
    assert compute.calls == 1
    torch.testing.assert_close(got.features, Counter(seed=2)().features)


def test_extractor_key_changes_with_everything_that_matters(tmp_path: Path) -> None:
    base = RGBFeatureConfig()
    key = extractor_key(base, (224, 224))
    assert key.startswith("efficientnet_lite0-") and key == extractor_key(RGBFeatureConfig(), (224, 224))
    others = {
        extractor_key(RGBFeatureConfig(name="efficientnet_lite1"), (224, 224)),
        extractor_key(RGBFeatureConfig(pretrained=False), (224, 224)),
        extractor_key(base, (224, 256)),
        extractor_key(PointFeatureConfig(), (224, 224)),
        extractor_key(PointFeatureConfig(num_groups=512), (224, 224)),
    }
    assert key not in others and len(others) == 5


def test_extractor_key_follows_the_weights_file(tmp_path: Path) -> None:
    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"12345")
    cfg = RGBFeatureConfig(name="dino_vitb8", weights=weights)
    first = extractor_key(cfg, (224, 224))
    assert extractor_key(cfg, (224, 224)) == first
    weights.write_bytes(b"123456")
    second = extractor_key(cfg, (224, 224))
    os.utime(weights, ns=(1, 1))
    assert len({first, second, extractor_key(cfg, (224, 224))}) == 3


def test_sample_key_changes_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "000.png"
    path.write_bytes(b"abc")
    key = sample_key(path)
    assert str(path.resolve()) in key and sample_key(path) == key
    os.utime(path, ns=(10**9, 10**9))
    touched = sample_key(path)
    path.write_bytes(b"abcd")
    os.utime(path, ns=(10**9, 10**9))
    assert len({key, touched, sample_key(path)}) == 3


def test_sample_key_of_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing.png"):
        sample_key(tmp_path / "missing.png")


def test_key_of_shipped_weights_follows_the_installed_file(monkeypatch, tmp_path) -> None:
    import cmdiad.features.rgb as rgb
    from cmdiad.config import RGBFeatureConfig
    from cmdiad.features.cache import extractor_key

    cfg = RGBFeatureConfig(name="efficientnet_lite0")
    before = extractor_key(cfg, (32, 32))
    fake = tmp_path / "other.pth"
    fake.write_bytes(b"x" * 10)
    monkeypatch.setattr(rgb, "shipped_lite_weights", lambda name: fake)
    assert extractor_key(cfg, (32, 32)) != before
    assert extractor_key(RGBFeatureConfig(name="efficientnet_lite0", pretrained=False), (32, 32)) == extractor_key(
        RGBFeatureConfig(name="efficientnet_lite0", pretrained=False), (32, 32))


def test_timing_is_kept_on_disk_and_a_corrupt_file_is_ignored(tmp_path: Path) -> None:
    FeatureCache(tmp_path).put_timing("fpfh-abc", 12.5)
    assert FeatureCache(tmp_path).get_timing("fpfh-abc") == 12.5
    assert FeatureCache(tmp_path).get_timing("other") is None
    (tmp_path / "fpfh-abc" / "timing.json").write_text("{not json")
    assert FeatureCache(tmp_path).get_timing("fpfh-abc") is None
    memory = FeatureCache(None)
    assert memory.get_timing("k") is None
    memory.put_timing("k", 3.0)
    assert memory.get_timing("k") == 3.0
