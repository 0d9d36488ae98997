"""Command-line interface: the only place that parses strings, prints and shows progress bars.

Verbs: ``synth``, ``preprocess``, ``convert-eyecandies``, ``experiment``, ``demo``, ``fit``,
``predict``, ``config``, ``evaluate``, ``report``, ``export``, ``serve``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cmdiad import __version__
from cmdiad.cli_deploy import add_deploy_parsers
from cmdiad.errors import CmdiadError, ConfigError

log = logging.getLogger("cmdiad")

DEFAULT_DATA = Path("data/synthetic")
DEFAULT_RUN = Path("runs/demo")


class Bars:
    """tqdm progress bars keyed by stage name, fed by library ``progress(stage, done, total)``.

    Each bar shows the stage name, done/total, the elapsed time and an ETA; a stage whose
    ``done`` goes back (a new row running the same stage) starts a new bar. ``" loss "`` in a
    stage name moves the text after it to the bar's postfix (the distiller's running loss).
    """

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}{postfix}]"

    def __init__(self, enabled: bool = True, file: Any = None) -> None:
        self.enabled = enabled
        self.file = file
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        key = stage.split(" loss ")[0]
        bar = self.bars.get(key)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self.bars[key] = tqdm(total=total, desc=key, leave=False, file=self.file or sys.stderr,
                                        dynamic_ncols=True, bar_format=self.FORMAT, mininterval=0.5)
        if " loss " in stage:
            bar.set_postfix_str("loss " + stage.split(" loss ")[1])
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[key]


# ----------------------------------------------------------------------------- config
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _apply_sets(data: dict[str, Any], items: list[str] | None, route=lambda key: key) -> None:
    """Apply ``--set key=value`` items (values parsed as JSON when they are JSON) to ``data``."""
    from cmdiad import config as C

    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        C.set_path(data, route(key), _parse_value(value))


def _resolved_data(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of ``--preset``, ``--config``, ``--set`` and ``extra``, merged in that order."""
    from cmdiad import config as C
    from cmdiad.pipeline.presets import preset

    data = copy.deepcopy(preset(args.preset))  # --set writes into nested tables: never into PRESETS itself
    if args.config is not None:
        data = C.merge(data, C.load_file(args.config))
    exp_fields = {f for f in C.ExperimentConfig.__dataclass_fields__}
    # rgb.weights=... means detector.rgb.weights
    _apply_sets(data, args.set, lambda key: key if key.split(".")[0] in exp_fields else "detector." + key)
    data = C.merge(data, extra or {})
    if getattr(args, "device", None):
        data["device"] = args.device
    if getattr(args, "seed", None) is not None:
        C.set_path(data, "detector.seed", args.seed)
    return data


def _experiment_config(args: argparse.Namespace, extra: dict[str, Any] | None = None,
                       modalities: tuple[str, ...] | None = None):
    """The resolved ExperimentConfig; weights are asked for the extractors of ``modalities`` only.

    ``modalities`` defaults to what ``args.method`` (fit) or the configured rows (experiment) use.
    """
    from cmdiad import config as C

    try:
        cfg = C.from_dict(C.ExperimentConfig, _resolved_data(args, extra))
    except ConfigError as exc:
        if "expected a list" in str(exc):
            raise ConfigError(f"{exc}; write lists in JSON, e.g. --set data.image_size=[96,96]") from None
        raise
    if modalities is None:
        modalities = _used_modalities(getattr(args, "method", None), cfg.rows)
    _check_weights(cfg.detector, args.preset, modalities)
    return cfg


def _used_modalities(method: str | None, rows) -> tuple[str, ...]:
    """Modalities whose extractors fit (``method``) or an experiment (``rows``) builds."""
    from cmdiad.pipeline.streams import ALL_ROWS, parse_row

    methods = [method] if method is not None else [parse_row(r)[0] for r in (rows or ALL_ROWS)]
    return tuple(sorted({m for x in methods for m in ([x] if x in ("rgb", "xyz") else ["rgb", "xyz"])}))


def _check_weights(det, preset_name: str, modalities: tuple[str, ...] = ("rgb", "xyz")) -> None:
    """Weights files the extractors of ``modalities`` need must be given and exist."""
    missing = []
    if "rgb" in modalities and det.rgb.name.startswith(("dino", "dinov2")) and det.rgb.pretrained \
            and det.rgb.weights is None:
        missing.append("rgb.weights (DINO ViT weights file: original .pth or timm .safetensors)")
    if "xyz" in modalities and det.xyz.name == "point_mae" and det.xyz.pretrained and det.xyz.weights is None:
        missing.append("xyz.weights (Point-MAE pretraining checkpoint, e.g. pointmae_pretrain.pth)")
    if missing:
        raise ConfigError(f"preset {preset_name!r} needs weights files that cmdiad cannot download; "
                          "give them with --set: " + "; ".join(missing))
    for m, part in (("rgb", det.rgb), ("xyz", det.xyz)):
        if m in modalities and part.weights is not None and not Path(part.weights).is_file():
            raise ConfigError(f"{part.weights}: weights file not found ({part.name})")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", choices=["default", "paper"],
                   help="configuration preset: 'default' (offline, CPU-sized: EfficientNet-Lite0 + FPFH) or "
                        "'paper' (DINO ViT-B/8 + Point-MAE; their weights files are given with --set)")
    p.add_argument("--config", type=Path, help="TOML or JSON config file (ExperimentConfig keys, see 'cmdiad config "
                                               "--keys'), applied over the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, applied last, e.g. --set distill.epochs=5 or "
                        "--set data.image_size=[96,96] (values are JSON; repeatable)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--seed", type=int, default=None, help="seed of sampling and training (default: detector.seed)")
    p.add_argument("--cache", type=Path, default=None, help="on-disk feature cache folder (default: in memory)")


def cmd_config(args: argparse.Namespace) -> int:
    from cmdiad.configdoc import describe

    print(describe(_experiment_config(args, modalities=()), keys=args.keys))
    return 0


# ----------------------------------------------------------------------------- verbs
def cmd_synth(args: argparse.Namespace) -> int:
    from cmdiad.synthetic.generator import SynthConfig, existing_categories, generate_dataset

    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.categories:
        kwargs["categories"] = tuple(args.categories.split(","))
    if args.size:
        h, _, w = args.size.partition("x")
        try:
            kwargs["image_size"] = (int(h), int(w or h))
        except ValueError:
            raise ConfigError(f"synth: --size {args.size!r}: expected HxW, e.g. 192x256") from None
    for name, field in (("train", "train"), ("validation", "validation"), ("test_good", "test_good"),
                        ("test_defect", "test_per_defect"), ("validation_defect", "validation_per_defect"),
                        ("geometry_shading", "geometry_shading"), ("null_twins", "null_twins")):
        value = getattr(args, name)
        if value is not None:
            kwargs[field] = value
    try:
        cfg = SynthConfig(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"synth: {exc}") from None
    t0 = time.perf_counter()
    bars = Bars(not args.quiet)
    clash = existing_categories(args.out, cfg)
    if clash:
        raise ConfigError(f"synth: {args.out} already has category folders {clash}; choose a new folder "
                          "(nothing was written)")
    summary = generate_dataset(args.out, cfg, progress=lambda done, total: bars("synth", done, total))
    if not args.quiet:
        print(json.dumps(summary, indent=2, default=str))
        print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from cmdiad import config as C
    from cmdiad.config import PreprocessConfig
    from cmdiad.preprocessing.run import preprocess_dataset

    data: dict[str, Any] = C.load_file(args.config) if args.config is not None else {}
    _apply_sets(data, args.set)
    cfg = C.from_dict(PreprocessConfig, data, "preprocess config")
    bars = Bars()
    report = preprocess_dataset(args.src, args.out, config=cfg, workers=args.workers, seed=args.seed,
                                progress=lambda done, total: bars("preprocess", done, total))
    print(f"processed {len(report.processed)} samples into {args.out}")
    for path, err in report.failures:
        print(f"FAILED {path}: {err}", file=sys.stderr)
    return 1 if report.failures else 0


def cmd_convert_eyecandies(args: argparse.Namespace) -> int:
    from cmdiad.io.eyecandies import convert_eyecandies

    cats = tuple(args.categories.split(",")) if args.categories else None
    bars = Bars()
    convert_eyecandies(args.src, args.out, categories=cats, progress=lambda done, total: bars("convert", done, total))
    print(f"wrote {args.out}")
    return 0


def _print_tables(out: Path) -> None:
    from cmdiad.viz.report import (
        METRICS,
        PLACEBO_NOTE,
        PLACEBOS,
        defect_table,
        defect_types,
        format_markdown,
        load_records,
        metric_table,
    )

    records = load_records(out)
    for metric, title in METRICS.items():
        print(f"\n{title}\n{format_markdown(*metric_table(records, metric))}")
    if defect_types(records):
        for metric, title in METRICS.items():
            table = format_markdown(*defect_table(records, metric))
            print(f"\n{title} per defect type (mean over categories)\n{table}")
        print(f"\nPer defect type, {PLACEBO_NOTE}.")
        for metric, title in PLACEBOS.items():
            print(f"\n{title} per defect type\n{format_markdown(*defect_table(records, metric))}")


def pixel_fusion_line(chosen: dict[str, Any] | None, setting: str, r2: float | None,
                      r2_se: float | None = None) -> str:
    """What an MTFI fit did with its hallucinated map that a user should read: the setting its
    labelled validation parts ``chosen`` (a fit report's ``pixel_fusion``), or that the map was
    left out (``setting``, with the hallucination's fidelity ``r2`` and its jackknife standard
    error ``r2_se``, which decided it); empty otherwise."""
    from cmdiad.scoring.fusion import LEFT_OUT

    if chosen:
        return (f"pixel fusion: {chosen['chosen']} (label-free: {chosen['label_free']}), chosen on "
                f"{chosen['labelled_parts']} labelled validation parts")
    if setting == LEFT_OUT:
        r2, se = (float("nan") if v is None else v for v in (r2, r2_se))
        return f"pixel fusion: {LEFT_OUT} (hallucination fidelity r2 {r2:.2f}, se {se:.2f}, on validation parts)"
    return ""


def _print_record(r: dict[str, Any]) -> None:
    from cmdiad.pipeline.streams import row_name

    fit = f"  fit {r['fit_seconds']:.1f} s" if "fit_seconds" in r else ""
    left = f" ({r['num_left_out']} left out)" if r.get("num_left_out") else ""
    print(f"  {r['category']:>14} {row_name(r['method'], r['main']):<8} n={r.get('num_test')}{left}  "
          f"I-AUROC {r['i_auroc']:.4f}  P-AUROC {r['p_auroc']:.4f}  AUPRO@30% {r['aupro_30']:.4f}  "
          f"AUPRO@1% {r['aupro_1']:.4f}{fit}")
    if line := pixel_fusion_line(r.get("pixel_fusion"), r.get("pixel_setting", ""), r.get("fidelity_r2"),
                                 r.get("fidelity_r2_se")):
        print(f"  {'':>14} {'':<8}   {line}")
    for defect, m in sorted((r.get("per_defect") or {}).items()):
        values = "  ".join(f"{k} {m[k]:.4f}" for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_1"))
        placebo = "  ".join(f"{k} {m[k]:.4f}" for k in ("p_auroc_placebo", "aupro_30_placebo") if k in m)
        print(f"  {'':>14} {'':<8}   {defect:<12} n={m['num_test']}  {values}" + (f"  ({placebo})" if placebo else ""))


def cmd_experiment(args: argparse.Namespace) -> int:
    from cmdiad.pipeline.runs import run_experiment

    extra: dict[str, Any] = {}
    if args.categories:
        extra["categories"] = args.categories.split(",")
    if args.methods:
        extra["rows"] = args.methods.split(",")
    cfg = _experiment_config(args, extra)
    t0 = time.perf_counter()
    command = "cmdiad " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_experiment(args.data, args.out, cfg, cache_dir=args.cache, command=command, progress=Bars(),
                   overwrite=getattr(args, "overwrite", False), run_info={"preset": args.preset},
                   on_resume=lambda n: print(f"resuming: {n} rows already done in {args.out}"),
                   on_record=lambda r: _print_record({k: v for k, v in r.items() if k != "per_defect"}))
    _print_tables(args.out)
    print(f"\nresults in {args.out} (results.md, results.csv, results.json, timings.md, run.json, report.html); "
          f"total {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cmdiad.io.mvtec3d import native_size
    from cmdiad.synthetic.generator import SynthConfig, generate_dataset

    if not (args.data.is_dir() and any(args.data.iterdir())):
        print(f"generating the default synthetic dataset in {args.data}")
        bars = Bars()
        generate_dataset(args.data, SynthConfig(), progress=lambda done, total: bars("synth", done, total))
    # The demo runs at the dataset's own size (the generated one's, or the smallest of a set's
    # categories: no upsampling); a user --set still wins.
    size = native_size(args.data)
    print(f"demo at {size[0]}x{size[1]} px, the dataset's own size (--set data.image_size=[H,W] to change)")
    args.set = [f"data.image_size=[{size[0]},{size[1]}]", *(args.set or [])]
    args.preset, args.config, args.seed = "default", None, None
    args.categories = args.methods = None
    return cmd_experiment(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cmdiad.pipeline.evaluate import recompute_records

    for r in recompute_records(args.run, mode=args.aupro_mode):
        _print_record(r)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cmdiad.viz.html import write_html_report
    from cmdiad.viz.report import load_records

    records = load_records(args.run)
    if not records:
        raise ConfigError(f"{args.run}: no results.json with records")
    try:
        run_info = json.loads((args.run / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        run_info = None  # folders written before run.json existed
    write_html_report(args.run, records, args.run / "raw", title=f"cmdiad results: {args.run}",
                      command=(run_info or {}).get("command", ""), run_info=run_info)
    _print_tables(args.run)
    print(f"wrote {args.run / 'report.html'}")
    return 0


# ----------------------------------------------------------------------------- parser
class _Help(argparse.HelpFormatter):
    """Shows an option's default in its help when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and "%(default)" not in text and default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="generate the synthetic dataset (MVTec 3D-AD layout)")
    s.add_argument("out", type=Path, help="dataset folder to write")
    s.add_argument("--categories", help="comma-separated category names (default: ring,tile,dome)")
    s.add_argument("--size", help="image size HxW, e.g. 192x256 (default: 192x192)")
    s.add_argument("--train", type=int, help="training samples per category (default: 30)")
    s.add_argument("--validation", type=int, help="validation samples per category (default: 6)")
    s.add_argument("--test-good", dest="test_good", type=int, help="good test samples per category (default: 12)")
    s.add_argument("--test-defect", dest="test_defect", type=int,
                   help="test samples per category and defect type (default: 6)")
    s.add_argument("--validation-defect", dest="validation_defect", type=int,
                   help="labelled defective validation samples per category and defect type, with masks "
                        "(default: 0; they choose an MTFI row's pixel fusion, fusion.labelled_choice)")
    s.add_argument("--geometry-shading", dest="geometry_shading", type=float,
                   help="fraction in [0, 1] of their shading change that bumps and dents put in the image "
                        "(default: 0, invisible to the camera; 1: physical shading)")
    s.add_argument("--null-twins", dest="null_twins", action="store_true", default=None,
                   help="render every defective sample without its defect (same part, pose and noise) and "
                        "keep its mask: a run on this set scores each map's prior at the defects' true places")
    s.add_argument("--seed", type=int, default=0, help="seed of the whole dataset")
    s.add_argument("--quiet", action="store_true", help="print nothing (no progress bar, no summary)")
    s.set_defaults(func=cmd_synth)


def _add_preprocess(sub) -> None:
    s = sub.add_parser("preprocess", help="background removal + padding, written to a new tree")
    s.add_argument("src", type=Path, help="dataset root (MVTec 3D-AD layout)")
    s.add_argument("out", type=Path, help="folder of the preprocessed copy")
    s.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    s.add_argument("--seed", type=int, default=0, help="seed of the RANSAC plane fit")
    s.add_argument("--config", type=Path, help="TOML/JSON file of preprocessing thresholds")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a threshold in the cloud's units, e.g. --set plane_distance=5 for clouds in mm "
                        "(fields: border, ransac_distance, ransac_n, ransac_iterations, plane_distance, "
                        "min_border_points, cluster_eps, cluster_min_points, pad_multiple)")
    s.set_defaults(func=cmd_preprocess)
    s = sub.add_parser("convert-eyecandies", help="convert the original Eyecandies release to the MVTec layout")
    s.add_argument("src", type=Path, help="folder of the original Eyecandies release (one folder per category)")
    s.add_argument("out", type=Path, help="folder of the converted dataset")
    s.add_argument("--categories", help="comma-separated categories to convert (default: all found)")
    s.set_defaults(func=cmd_convert_eyecandies)


def _add_demo(sub) -> None:
    s = sub.add_parser("demo", help="generate the synthetic set if absent and run the experiment on it"
                       " at its own image size")
    s.add_argument("--data", type=Path, default=DEFAULT_DATA, help="synthetic dataset (generated when absent)")
    s.add_argument("--out", type=Path, default=DEFAULT_RUN, help="folder of results and report.html")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. distill.epochs=5")
    s.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    s.add_argument("--cache", type=Path, default=None, help="on-disk feature cache folder (default: in memory)")
    s.set_defaults(func=cmd_demo)


def _add_config_verb(sub) -> None:
    s = sub.add_parser("config", help="print the resolved configuration, or every key with its default")
    s.add_argument("--show", action="store_true", help="print the resolved configuration as JSON (the default)")
    s.add_argument("--keys", action="store_true", help="list every key with its default value and meaning")
    _add_config_args(s)
    s.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cmdiad`` command."""
    p = argparse.ArgumentParser(prog="cmdiad", description="Multimodal (RGB + 3D) anomaly detection, CMDIAD.",
                                formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"cmdiad {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)
    _add_synth(sub)
    _add_preprocess(sub)
    s = sub.add_parser("experiment", help="the paper's nine rows on every category of a dataset")
    s.add_argument("data", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--categories", help="comma-separated (default: all)")
    s.add_argument("--methods", help="comma-separated rows, e.g. xyz,rgb,dual,f2f_xyz (default: all nine)")
    s.add_argument("--overwrite", action="store_true",
                   help="delete earlier results in --out (another configuration's) instead of refusing")
    _add_config_args(s)
    s.set_defaults(func=cmd_experiment)

    _add_demo(sub)
    add_deploy_parsers(sub, _add_config_args)
    _add_config_verb(sub)
    s = sub.add_parser("evaluate", help="recompute metrics from an experiment's raw outputs")
    s.add_argument("run", type=Path)
    s.add_argument("--aupro-mode", dest="aupro_mode", default=None, choices=["exact", "official100"],
                   help="AU-PRO mode (default: the one the run used, from its config.json)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="rewrite tables and report.html of an experiment folder")
    s.add_argument("run", type=Path)
    s.set_defaults(func=cmd_report)
    for s in sub.choices.values():  # -v after the verb too; SUPPRESS keeps a -v given before it
        s.formatter_class = _Help
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmdiad`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("PIL", "matplotlib"):  # their debug lines drown cmdiad's under -v
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except CmdiadError as exc:
        print(f"cmdiad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmdiad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
