"""The ``paper`` preset pins the reference protocol, row by row of issue #14's table."""

from __future__ import annotations

import pytest

from cmdiad.config import ExperimentConfig, from_dict, merge
from cmdiad.errors import ConfigError
from cmdiad.pipeline.presets import PRESETS, preset


@pytest.fixture(scope="module")
def paper() -> ExperimentConfig:
    return from_dict(ExperimentConfig, merge({}, preset("paper")))


def test_every_preset_resolves_strictly() -> None:
    for name in PRESETS:
        assert isinstance(from_dict(ExperimentConfig, merge({}, preset(name))), ExperimentConfig)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("m3dm")


def test_paper_backbones_and_grids(paper: ExperimentConfig) -> None:
    det = paper.detector
    assert (det.rgb.name, det.xyz.name, det.data.image_size) == ("dino_vitb8", "point_mae", (224, 224))
    assert (det.xyz.patch_stride, det.xyz.num_groups, det.xyz.group_size) == (4, 1024, 128)


def test_paper_distillers_follow_the_reference(paper: ExperimentConfig) -> None:
    d = paper.detector.distill
    assert d.architecture == "reference"  # reference F2F/F2I/I2F, so released checkpoints load
    assert d.grid == "finer"  # RGB 28x28 repeated to 56x56; hallucinated banks 56x56
    assert d.val_fraction == 0.0  # trains on every training sample
    assert d.pooled  # one distiller per design and direction over every category
    assert (d.epochs, d.batch_size, d.warmup_epochs, d.seed) == (100, 32, 10, 3407)
    assert d.lr == 5e-4 and (d.i2f_lr_main_xyz, d.i2f_lr_main_rgb) == (3e-4, 2e-4)
    assert d.warmup_from_zero and not d.masked_loss and d.loss_sum_over_positions
    assert (d.width, d.trunk_width, d.trunk_blocks) == (96, 64, 12)  # 384/96/32 decoder, 512-ch trunk
    assert d.checkpoint is None


def test_paper_point_mae_runs_as_the_reference(paper: ExperimentConfig) -> None:
    assert paper.detector.xyz.backbone_train_mode  # train mode
    assert paper.detector.xyz.average_padding == 0  # 3x3 average without padding


def test_paper_banks_postprocessing_and_fusion(paper: ExperimentConfig) -> None:
    mem, fusion = paper.detector.memory, paper.detector.fusion
    assert mem.standardize == "m3dm" and mem.blur_mode == "pil8bit" and mem.keep_invalid_patches
    assert (mem.coreset.ratio, mem.blur_sigma) == (0.1, 4.0)
    assert (fusion.kind, fusion.fit_on, fusion.nu, fusion.seed) == ("ocsvm", "train", 0.5, 42)
    # Every pixel row of a large MVTec 3D-AD / Eyecandies category fits (>= 1000 samples x 224^2).
    assert fusion.max_pixel_rows >= 1000 * 224 * 224


def test_paper_metrics_round_like_the_reference_tables(paper: ExperimentConfig) -> None:
    assert paper.metrics.aupro_mode == "official100"
    assert paper.metrics.round_per_class_digits == 3


def test_default_preset_keeps_the_clean_choices() -> None:
    cfg = from_dict(ExperimentConfig, merge({}, preset("default")))
    d = cfg.detector.distill
    assert (d.architecture, d.grid, d.masked_loss, d.warmup_from_zero) == ("cmdiad", "main", True, False)
    assert cfg.detector.xyz.average_padding == 1 and not cfg.detector.memory.keep_invalid_patches
    assert cfg.metrics.round_per_class_digits is None
    # measured choices (docs/method.md): gated fusion on validation parts, pooled distillers
    assert (cfg.detector.fusion.kind, cfg.detector.fusion.fit_on) == ("gated", "validation")
    assert d.pooled


def test_editing_a_returned_preset_leaves_the_registry_unchanged() -> None:
    from cmdiad.pipeline.presets import preset

    edited = preset("paper")
    edited["detector"]["fusion"]["fit_on"] = "validation"
    assert preset("paper")["detector"]["fusion"]["fit_on"] == "train"
