"""CLI help, the config verb, -v after the verb, quiet synth and messages that show the working syntax."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cmdiad import cli
from cmdiad.cli import build_parser, main
from cmdiad.errors import ConfigError


def _help(capsys, verb: str) -> str:
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("verb", ["synth", "preprocess", "convert-eyecandies", "demo", "fit", "predict", "config"])
def test_every_option_of_my_verbs_has_a_description(verb: str) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices[verb]
    bare = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert bare == []


def test_help_shows_defaults(capsys) -> None:
    text = _help(capsys, "fit")
    assert "(default: 0.01)" in text and "category folder under the dataset root" in text
    assert "(default: test)" in _help(capsys, "predict")
    assert "training samples per category (default: 30)" in _help(capsys, "synth")


def test_verbose_is_accepted_after_the_verb_and_quiets_pil(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "d"), "--categories", "ring", "--size", "16x16", "--train", "1",
                 "--validation", "0", "--test-good", "1", "--test-defect", "1", "--quiet", "-v"]) == 0
    assert capsys.readouterr().out == ""  # --quiet prints nothing
    assert logging.getLogger("PIL").getEffectiveLevel() >= logging.WARNING
    assert build_parser().parse_args(["-v", "report", "x"]).verbose is True
    assert build_parser().parse_args(["report", "x"]).verbose is False


def test_synth_errors_name_the_problem_and_write_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "d" / "ring").mkdir(parents=True)
    assert main(["synth", str(tmp_path / "d"), "--categories", "ring,tile", "--quiet"]) == 2
    assert "already has category folders ['ring']" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ring"]
    for flags, hint in ((["--size", "9ax9"], "expected HxW"), (["--geometry-shading", "2"], "geometry_shading"),
                        (["--size", "8x8"], "both sides >= 16")):
        assert main(["synth", str(tmp_path / "e"), *flags, "--quiet"]) == 2
        assert hint in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_config_show_and_keys(capsys) -> None:
    assert main(["config", "--show", "--set", "distill.epochs=3", "--set", "data.image_size=[96,96]"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["detector"]["distill"]["epochs"] == 3 and shown["detector"]["data"]["image_size"] == [96, 96]
    assert main(["config", "--keys", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert 'detector.memory.knn_backend = "torch"' in out and "Nearest-neighbour back-end" in out
    assert 'detector.rgb.name = "dino_vitb8" (built-in default' in out  # the preset's value, and the default


@pytest.mark.parametrize(("setting", "hint"), [("data.image_size=96", "--set data.image_size=[96,96]"),
                                               ("memory.knn_backend=annoy", "use one of: torch, faiss"),
                                               ("fusion.kind=max", "use one of: ocsvm, sum")])
def test_config_errors_show_the_working_syntax(capsys, setting: str, hint: str) -> None:
    assert main(["config", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err


def test_paper_preset_asks_only_for_the_weights_the_method_uses(tmp_path: Path) -> None:
    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"x")
    base = ["fit", "data", "--category", "c", "--out", "m", "--preset", "paper", "--set", f"rgb.weights={weights}"]
    cli._experiment_config(build_parser().parse_args([*base, "--method", "rgb"]))  # no xyz.weights needed
    with pytest.raises(ConfigError, match="xyz.weights"):
        cli._experiment_config(build_parser().parse_args([*base, "--method", "dual"]))
    with pytest.raises(ConfigError, match="rgb.weights"):
        cli._experiment_config(build_parser().parse_args(["fit", "d", "--category", "c", "--out", "m", "--preset",
                                                          "paper", "--method", "rgb"]))


def test_demo_runs_at_the_datasets_own_size(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "d"
    assert main(["synth", str(data), "--categories", "ring", "--size", "24x40", "--train", "1", "--validation", "0",
                 "--test-good", "1", "--test-defect", "1", "--quiet"]) == 0
    calls = []
    monkeypatch.setattr(cli, "cmd_experiment", lambda args: calls.append(list(args.set)) or 0)
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "r")]) == 0
    assert calls[-1] == ["data.image_size=[24,40]"]  # not the generator's default 192x192
    assert "demo at 24x40 px" in capsys.readouterr().out
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "data.image_size=[16,16]"]) == 0
    assert calls[-1] == ["data.image_size=[24,40]", "data.image_size=[16,16]"]  # the user's --set comes last and wins
