"""Features kept in float16 (``data.feature_dtype``): stored at half size, handed out as float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cmdiad.config import DataConfig, PointFeatureConfig
from cmdiad.errors import ConfigError
from cmdiad.features.cache import FeatureCache
from cmdiad.features.fpfh import FPFHExtractor, build_fpfh
from cmdiad.io import mvtec3d
from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.encoder import Encoder
from cmdiad.serve.worker import NoFeatureCache
from cmdiad.synthetic.generator import SynthConfig, generate_dataset
from cmdiad.types import PatchFeatures


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dtype")
    generate_dataset(root, SynthConfig(categories=("ring",), image_size=(48, 48), train=3, validation=0,
                                       test_good=1, test_per_defect=1, seed=5))
    return list_records(root, "ring", "train") + list_records(root, "ring", "test")[:2]


def _encoder(cache: FeatureCache, dtype: str = "float32") -> Encoder:
    cfg = PointFeatureConfig(name="fpfh", patch_stride=8)
    return Encoder({"xyz": build_fpfh(cfg)}, {"xyz": cfg}, DataConfig(image_size=(32, 32), feature_dtype=dtype),
                   cache=cache, batch_size=2)


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"read_xyz": 0, "patch_features": 0}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return counted

    monkeypatch.setattr(mvtec3d, "read_xyz", wrap("read_xyz", mvtec3d.read_xyz))
    monkeypatch.setattr(FPFHExtractor, "patch_features", wrap("patch_features", FPFHExtractor.patch_features))
    return calls


def _pf(seed: int = 0) -> PatchFeatures:
    gen = torch.Generator().manual_seed(seed)
    return PatchFeatures(torch.randn(1, 6, 3, 3, generator=gen) * 3, torch.rand(1, 3, 3, generator=gen) > 0.3)


@pytest.mark.parametrize("on_disk", [False, True])
def test_as_stored_keeps_the_storage_dtype_and_float32_is_the_default(on_disk: bool, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c" if on_disk else None)
    pf = _pf()
    stored = cache.put("e", "s", pf, dtype=torch.float16, as_stored=True)
    assert stored.features.dtype == torch.float16
    assert torch.equal(stored.features, pf.features.half()) and torch.equal(stored.valid, pf.valid)
    again = cache.get("e", "s", as_stored=True)
    assert again.features.dtype == torch.float16 and torch.equal(again.features, stored.features)
    plain = cache.get("e", "s")
    assert plain.features.dtype == torch.float32 and torch.equal(plain.features, pf.features.half().float())
    assert cache.put("e", "t", pf).features.dtype == torch.float32  # the cache's own dtype (float32) by default
    assert cache.get("e", "t", as_stored=True).features.dtype == torch.float32


def test_float16_features_are_the_float32_ones_rounded_and_come_back_float32(records, tmp_path: Path) -> None:
    exact = _encoder(FeatureCache(None)).features(records, "xyz")
    half_enc = _encoder(FeatureCache(None), "float16")
    half = half_enc.features(records, "xyz")
    assert half.features.dtype == torch.float32 and half.features.shape == exact.features.shape
    assert torch.equal(half.features, exact.features.half().float()) and torch.equal(half.valid, exact.valid)
    kept = list(half_enc.cache._memory.values())
    assert len(kept) == len(records) and all(pf.features.dtype == torch.float16 for pf in kept)


def test_float16_disk_entries_are_half_size_and_a_second_run_decodes_nothing(records, tmp_path: Path,
                                                                             monkeypatch) -> None:
    first = _encoder(FeatureCache(tmp_path / "cache"), "float16").features(records, "xyz")
    files = sorted((tmp_path / "cache").glob("fpfh-*-float16/*.safetensors"))
    assert len(files) == len(records)
    assert all(load_file(str(f))["features"].dtype == torch.float16 for f in files)
    calls = _count_calls(monkeypatch)
    second = _encoder(FeatureCache(tmp_path / "cache"), "float16").features(records, "xyz")
    assert torch.equal(second.features, first.features)
    assert calls == {"read_xyz": 0, "patch_features": 0}


def test_float32_and_float16_runs_do_not_share_entries(records, tmp_path: Path, monkeypatch) -> None:
    exact = _encoder(FeatureCache(tmp_path / "cache")).features(records, "xyz")
    calls = _count_calls(monkeypatch)
    half = _encoder(FeatureCache(tmp_path / "cache"), "float16").features(records, "xyz")
    assert calls["patch_features"] > 0  # float16 entries are their own, not the float32 ones read back
    assert torch.equal(half.features, exact.features.half().float())
    again = _encoder(FeatureCache(tmp_path / "cache")).features(records, "xyz")
    assert torch.equal(again.features, exact.features)  # float32 entries untouched


def test_a_cache_that_keeps_nothing_still_gives_features(records) -> None:
    enc = _encoder(NoFeatureCache(), "float16")
    pf = enc.features(records[:2], "xyz")
    assert pf.features.dtype == torch.float32 and pf.features.shape[0] == 2
    assert enc.cache.misses == 2
    kept = _encoder(FeatureCache(None), "float16").features(records[:2], "xyz")
    assert torch.equal(pf.features, kept.features)  # rounded like a stored entry: serving scores as fitting did


def test_unknown_feature_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="feature_dtype"):
        DataConfig(feature_dtype="bfloat16")
