"""MemoryBank: valid-patch collection, training scores ≈ 0, persistence, errors."""

from __future__ import annotations

import math

import pytest
import torch

from cmdiad.config import CoresetConfig, MemoryConfig
from cmdiad.memory import bank as bank_module
from cmdiad.memory.bank import MemoryBank, SplitBank, _RowBlocks, empty_bank, new_bank, reweighted_image_score
from cmdiad.types import PatchFeatures


def _features(b: int = 3, c: int = 12, h: int = 5, seed: int = 0, invalid: float = 0.2) -> PatchFeatures:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, c, h, h, generator=gen) * 2.0 + 0.5
    valid = torch.rand(b, h, h, generator=gen) > invalid
    return PatchFeatures(feats, valid)


def _bank(ratio: float = 1.0, **kw) -> MemoryBank:
    return MemoryBank(MemoryConfig(coreset=CoresetConfig(ratio=ratio), **kw))


def test_only_valid_patches_are_collected() -> None:
    pf = _features()
    bank = _bank()
    bank.add(pf)
    bank.finalize()
    assert bank.bank.shape == (int(pf.valid.sum()), 12)
    invalid_rows = bank.standardize(pf.features.permute(0, 2, 3, 1)[~pf.valid])
    dist = torch.cdist(invalid_rows, bank.bank).min(dim=1).values
    assert (dist > 1e-4).all()


def test_keep_invalid_patches_banks_them_as_zero_vectors_and_still_scores_them_zero() -> None:
    pf = _features()
    bank = _bank(keep_invalid_patches=True)
    bank.add(pf)
    bank.finalize(0.0, 1.0)  # no standardisation: the zero rows stay zero
    assert bank.bank.shape == (pf.valid.numel(), 12)  # every patch, as the reference's banks
    zero_rows = int((bank.bank.abs().sum(dim=1) == 0).sum())
    assert zero_rows == int((~pf.valid).sum())
    _, patch = bank.score(pf)
    assert float(patch[~pf.valid].abs().max()) == 0.0


def test_training_samples_score_zero_against_full_bank() -> None:
    pf = _features()
    bank = _bank()
    bank.add(PatchFeatures(pf.features[:2], pf.valid[:2]))
    bank.add(PatchFeatures(pf.features[2:], pf.valid[2:]))
    bank.finalize()
    image, patch = bank.score(pf)
    assert image.shape == (3,) and patch.shape == (3, 5, 5)
    assert float(patch.abs().max()) == 0.0 and float(image.abs().max()) == 0.0


def test_invalid_patches_score_zero_and_anomalies_score_higher() -> None:
    bank = _bank()
    bank.add(_features(seed=0, invalid=0.0))
    bank.finalize()
    test = _features(b=2, seed=1, invalid=0.3)
    test.features[1, :, 2, 2] += 40.0
    test.valid[1, 2, 2] = True
    image, patch = bank.score(test)
    assert (patch[~test.valid] == 0).all() and (patch[test.valid] > 0).all()
    assert patch[1].argmax() == 2 * 5 + 2 and image[1] > image[0] > 0


def test_sample_without_valid_patches_scores_zero() -> None:
    bank = _bank()
    bank.add(_features(invalid=0.0))
    bank.finalize()
    test = _features(b=2, seed=3, invalid=0.0)
    test.valid[0] = False
    image, patch = bank.score(test)
    assert image[0] == 0 and (patch[0] == 0).all() and image[1] > 0


def test_standardisation_per_bank_and_given_constants() -> None:
    pf = _features(invalid=0.0)
    bank = _bank()
    bank.add(pf)
    raw = pf.features.permute(0, 2, 3, 1).reshape(-1, 12)
    assert bank.collected_stats() == pytest.approx((float(raw.mean()), float(raw.std())), rel=1e-5)
    bank.finalize()
    assert bank.stats == pytest.approx((float(raw.mean()), float(raw.std())), rel=1e-5)
    assert abs(float(bank.bank.mean())) < 1e-5 and float(bank.bank.std()) == pytest.approx(1.0, rel=1e-5)
    fixed = _bank()
    fixed.add(pf)
    fixed.finalize(mean=1.0, std=4.0)
    assert fixed.stats == (1.0, 4.0)
    assert torch.allclose(fixed.bank, (raw - 1.0) / 4.0)


def test_coreset_size_and_subset() -> None:
    pf = _features(b=4, invalid=0.0)
    bank = _bank(ratio=0.3)
    bank.add(pf)
    bank.finalize()
    n = 4 * 25
    assert bank.bank.shape[0] == math.ceil(0.3 * n)
    full = (pf.features.permute(0, 2, 3, 1).reshape(-1, 12) - bank.mean) / bank.std
    exact = torch.cdist(bank.bank, full, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(dim=1).values.max() < 1e-5


def test_reweighting_formula_and_plain_max() -> None:
    s = torch.tensor([2.0])
    d = torch.tensor([[3.0, 4.0]])
    t = math.sqrt(16)
    expected = (1 - math.exp(2 / t) / (math.exp(3 / t) + math.exp(4 / t))) * 2.0
    assert float(reweighted_image_score(s, d, 16)) == pytest.approx(expected, rel=1e-6)
    assert float(reweighted_image_score(s, d, 16, reweight=False)) == 2.0
    huge = reweighted_image_score(torch.tensor([5000.0]), torch.tensor([[5001.0, 5002.0]]), 1)
    assert torch.isfinite(huge).all()


def test_reweight_false_gives_max_patch_score() -> None:
    bank = _bank(reweight=False)
    bank.add(_features(invalid=0.0))
    bank.finalize()
    image, patch = bank.score(_features(b=2, seed=5))
    assert torch.allclose(image, patch.flatten(1).max(dim=1).values)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_state_dict_round_trip_gives_identical_scores(backend: str) -> None:
    bank = _bank(ratio=0.5, knn_backend=backend)
    bank.add(_features(b=4))
    bank.finalize()
    state = bank.state_dict()
    assert set(state) == {"bank", "standardisation"}  # everything a fitted bank computes with
    loaded = MemoryBank.empty(bank.config, *bank.bank.shape)
    loaded.load_state_dict(state, strict=True)
    test = _features(b=2, seed=9)
    for a, b in zip(bank.score(test), loaded.score(test), strict=True):
        assert torch.equal(a, b)
    assert loaded.stats == bank.stats


def test_load_state_dict_refuses_another_shape() -> None:
    bank = _bank()
    bank.add(_features())
    bank.finalize()
    other = MemoryBank.empty(bank.config, bank.bank.shape[0] + 1, bank.bank.shape[1])
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(bank.state_dict(), strict=True)


def test_to_moves_the_buffers_and_rebuilds_the_index() -> None:
    bank = _bank()
    bank.add(_features())
    bank.finalize()
    test = _features(b=2, seed=4)
    before = bank.score(test)
    bank.to(torch.float64)  # any _apply: the index built over the old tensor must not be reused
    assert bank.bank.dtype == torch.float64 and bank._index is None
    bank.to(torch.float32)
    for a, b in zip(before, bank.score(test), strict=True):
        assert torch.allclose(a, b)


def test_misuse_raises() -> None:
    bank = _bank()
    with pytest.raises(ValueError, match="no valid patches"):
        bank.finalize()
    with pytest.raises(RuntimeError, match="not finalized"):
        bank.score(_features())
    bank.add(_features())
    with pytest.raises(ValueError, match="channels"):
        bank.add(_features(c=7))


def test_row_blocks_concatenate_across_block_boundaries(monkeypatch) -> None:
    monkeypatch.setattr(bank_module, "BLOCK_BYTES", 4 * 5 * 4)  # 4 rows of 5 float32 per block
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 5, generator=gen) for n in (3, 0, 7, 1, 4)]
    blocks = _RowBlocks()
    for p in parts:
        blocks.append(p)
    assert len(blocks.blocks) == 4 and blocks.dim == 5
    out = blocks.concat()
    assert torch.equal(out, torch.cat(parts))
    assert blocks.blocks == [] and blocks.num_rows == 0


@pytest.mark.parametrize(("sampler", "ratio"), [("greedy", 0.3), ("identity", 1.0), ("random", 0.5)])
def test_finalize_reports_coreset_progress_from_zero_to_kept(sampler: str, ratio: float) -> None:
    pf = _features(b=4, invalid=0.0)
    calls: list[tuple[str, int, int]] = []
    bank = MemoryBank(MemoryConfig(coreset=CoresetConfig(ratio=ratio, sampler=sampler)))
    bank.add(pf)
    bank.finalize(progress=lambda stage, done, total: calls.append((stage, done, total)))
    kept = bank.bank.shape[0]
    assert {s for s, _, _ in calls} == {"coreset"}
    assert calls[0][1] == 0 and calls[-1][1:] == (kept, kept)
    assert sum(1 for _, d, t in calls if d == t) == 1  # one closing call: a bar opens and closes once
    quiet = MemoryBank(MemoryConfig(coreset=CoresetConfig(ratio=ratio, sampler=sampler)))
    quiet.add(pf)
    quiet.finalize()
    assert torch.equal(quiet.bank, bank.bank)


def test_split_bank_scores_images_with_the_first_view_and_maps_with_the_second() -> None:
    pf = _features(b=4, c=12, seed=3)
    split = SplitBank(MemoryConfig(coreset=CoresetConfig(ratio=0.5)), 5)
    split.add(pf)
    split.finalize()
    views = (PatchFeatures(pf.features[:, :5], pf.valid), PatchFeatures(pf.features[:, 5:], pf.valid))
    alone = []
    for view in views:  # each view's bank on its own: the same coreset, standardisation and scores
        bank = _bank(0.5)
        bank.add(view)
        bank.finalize()
        alone.append(bank)
    query = _features(b=2, c=12, seed=4)
    image, patch = split.score(query)
    torch.testing.assert_close(image, alone[0].score(PatchFeatures(query.features[:, :5], query.valid))[0])
    torch.testing.assert_close(patch, alone[1].score(PatchFeatures(query.features[:, 5:], query.valid))[1])
    assert split.shape == {"image": alone[0].shape, "map": alone[1].shape} and split.dim == 12
    assert split.num_rows == alone[0].num_rows + alone[1].num_rows
    # the two views differ, so the bank is not one view scored twice
    assert not torch.allclose(patch, alone[0].score(PatchFeatures(query.features[:, :5], query.valid))[1])


def test_patch_scores_are_the_maps_of_score_without_an_image_score(monkeypatch) -> None:
    bank = _bank()
    bank.add(_features(invalid=0.0))
    bank.finalize()
    query = _features(b=3, seed=7, invalid=0.3)
    query.valid[2] = False  # a sample without valid patches scores 0 everywhere
    _, patch = bank.score(query)

    def no_image_score(*args, **kwargs):
        raise AssertionError("patch_scores computed an image score")

    monkeypatch.setattr(bank, "_image_scores", no_image_score)
    torch.testing.assert_close(bank.patch_scores(query), patch)
    assert (bank.patch_scores(query)[2] == 0).all() and (patch[:2][query.valid[:2]] > 0).all()
    split = SplitBank(MemoryConfig(coreset=CoresetConfig(ratio=1.0)), 5)
    split.add(_features(c=12, seed=8))
    split.finalize()
    monkeypatch.setattr(split.map, "_image_scores", no_image_score)  # the map view's bank gives maps only
    image, maps = split.score(_features(b=2, c=12, seed=9))
    assert image.shape == (2,) and maps.shape == (2, 5, 5) and (image > 0).all()


def test_split_bank_round_trips_through_its_shape_and_state_dict() -> None:
    split = new_bank(MemoryConfig(coreset=CoresetConfig(ratio=0.5)), 5)
    split.add(_features(b=4, c=12, seed=5))
    split.finalize()
    again = empty_bank(split.config, split.shape)
    assert isinstance(again, SplitBank) and again.split == 5
    again.load_state_dict(split.state_dict(), strict=True)
    assert set(split.state_dict()) == {"image.bank", "image.standardisation", "map.bank", "map.standardisation"}
    query = _features(b=2, c=12, seed=6)
    for a, b in zip(split.score(query), again.score(query), strict=True):
        torch.testing.assert_close(a, b)
    assert isinstance(empty_bank(split.config, [3, 4]), MemoryBank)
    with pytest.raises(ValueError, match="channels"):
        split.score(_features(b=1, c=5))
