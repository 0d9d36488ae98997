"""Command-line interface: the only place that parses strings, prints and shows progress bars.

Verbs: ``synth``, ``preprocess``, ``convert-eyecandies``, ``experiment``, ``demo``, ``fit``,
``predict``, ``evaluate``, ``report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cmdiad import __version__
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


def _experiment_config(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from cmdiad import config as C
    from cmdiad.pipeline.presets import preset

    data = C.merge({}, preset(args.preset))
    if args.config is not None:
        data = C.merge(data, C.load_file(args.config))
    exp_fields = {f for f in C.ExperimentConfig.__dataclass_fields__}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key.split(".")[0] not in exp_fields:
            key = "detector." + key  # rgb.weights=... means detector.rgb.weights
        C.set_path(data, key, _parse_value(value))
    data = C.merge(data, extra or {})
    if getattr(args, "device", None):
        data["device"] = args.device
    if getattr(args, "seed", None) is not None:
        C.set_path(data, "detector.seed", args.seed)
    cfg = C.from_dict(C.ExperimentConfig, data)
    _check_weights(cfg.detector, args.preset)
    return cfg


def _check_weights(det, preset_name: str) -> None:
    missing = []
    if det.rgb.name.startswith(("dino", "dinov2")) and det.rgb.pretrained and det.rgb.weights is None:
        missing.append("rgb.weights (DINO ViT weights file: original .pth or timm .safetensors)")
    if det.xyz.name == "point_mae" and det.xyz.pretrained and det.xyz.weights is None:
        missing.append("xyz.weights (Point-MAE pretraining checkpoint, e.g. pointmae_pretrain.pth)")
    if missing:
        raise ConfigError(f"preset {preset_name!r} needs weights files that cmdiad cannot download; "
                          "give them with --set: " + "; ".join(missing))
    for part in (det.rgb, det.xyz):
        if part.weights is not None and not Path(part.weights).is_file():
            raise ConfigError(f"{part.weights}: weights file not found ({part.name})")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", choices=["default", "paper"], help="configuration preset")
    p.add_argument("--config", type=Path, help="TOML or JSON config file (ExperimentConfig keys)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set distill.epochs=5 (repeatable)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--seed", type=int, default=None, help="global seed")
    p.add_argument("--cache", type=Path, default=None, help="on-disk feature cache folder (default: memory)")


# ----------------------------------------------------------------------------- verbs
def cmd_synth(args: argparse.Namespace) -> int:
    from cmdiad.synthetic.generator import SynthConfig, generate_dataset

    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.categories:
        kwargs["categories"] = tuple(args.categories.split(","))
    if args.size:
        h, _, w = args.size.partition("x")
        kwargs["image_size"] = (int(h), int(w or h))
    for name, field in (("train", "train"), ("validation", "validation"), ("test_good", "test_good"),
                        ("test_defect", "test_per_defect")):
        value = getattr(args, name)
        if value is not None:
            kwargs[field] = value
    cfg = SynthConfig(**kwargs)
    t0 = time.perf_counter()
    bars = Bars(not args.quiet)
    summary = generate_dataset(args.out, cfg, progress=lambda done, total: bars("synth", done, total))
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from cmdiad import config as C
    from cmdiad.config import PreprocessConfig
    from cmdiad.preprocessing.run import preprocess_dataset

    data: dict[str, Any] = C.load_file(args.config) if args.config is not None else {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        C.set_path(data, key, _parse_value(value))
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
    from cmdiad.viz.report import METRICS, defect_table, defect_types, format_markdown, load_records, metric_table

    records = load_records(out)
    for metric, title in METRICS.items():
        print(f"\n{title}\n{format_markdown(*metric_table(records, metric))}")
    if defect_types(records):
        for metric, title in METRICS.items():
            table = format_markdown(*defect_table(records, metric))
            print(f"\n{title} per defect type (mean over categories)\n{table}")


def _print_record(r: dict[str, Any]) -> None:
    from cmdiad.pipeline.streams import row_name

    fit = f"  fit {r['fit_seconds']:.1f} s" if "fit_seconds" in r else ""
    left = f" ({r['num_left_out']} left out)" if r.get("num_left_out") else ""
    print(f"  {r['category']:>14} {row_name(r['method'], r['main']):<8} n={r.get('num_test')}{left}  "
          f"I-AUROC {r['i_auroc']:.4f}  P-AUROC {r['p_auroc']:.4f}  AUPRO@30% {r['aupro_30']:.4f}  "
          f"AUPRO@1% {r['aupro_1']:.4f}{fit}")
    for defect, m in sorted((r.get("per_defect") or {}).items()):
        values = "  ".join(f"{k} {m[k]:.4f}" for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_1"))
        print(f"  {'':>14} {'':<8}   {defect:<12} n={m['num_test']}  {values}")


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
    from cmdiad.synthetic.generator import SynthConfig, generate_dataset

    if not (args.data.is_dir() and any(args.data.iterdir())):
        print(f"generating the default synthetic dataset in {args.data}")
        bars = Bars()
        generate_dataset(args.data, SynthConfig(), progress=lambda done, total: bars("synth", done, total))
    # The demo runs at the generated images' own size (no upsampling); a user --set still wins.
    size = SynthConfig().image_size
    args.set = [f"data.image_size=[{size[0]},{size[1]}]", *(args.set or [])]
    args.preset, args.config, args.seed = "default", None, None
    args.categories = args.methods = None
    return cmd_experiment(args)


def cmd_fit(args: argparse.Namespace) -> int:
    from cmdiad.config import replace
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.detector import Detector
    from cmdiad.pipeline.persist import build_encoder
    from cmdiad.pipeline.routing import Router
    from cmdiad.pipeline.runs import category_splits

    cfg = _experiment_config(args)
    data = cfg.detector.data
    train, val, _ = category_splits(args.data, args.category, with_validation=data.train_with_validation,
                                    skip_bad=data.skip_bad_samples)
    if args.method == "mixed":
        specs = {"both": ("dual", "both"), "xyz": (args.distill, "xyz"), "rgb": (args.distill, "rgb")}
    else:
        main = args.main or {"xyz": "xyz", "rgb": "rgb", "dual": "both"}.get(args.method, "xyz")
        specs = {"single": (args.method, main)}
    encoder = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(args.cache))
    detectors = {}
    for route, (method, main) in specs.items():
        det = Detector(replace(cfg.detector, method=method, main=main), encoder, device=cfg.device)
        report = det.fit(train, validation=val, threshold_frr=args.frr, progress=Bars())
        print(f"fitted {method} ({main} main) on {report.num_train} samples in {report.fit_seconds:.1f} s; "
              f"threshold {det.threshold:.5g} at FRR {args.frr}")
        detectors[route] = det
    if "single" in detectors:
        from cmdiad.pipeline.persist import save_detector

        save_detector(detectors["single"], args.out)
    else:
        Router(detectors).save(args.out)
    print(f"model written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cmdiad.pipeline.inputs import records_from_inputs
    from cmdiad.pipeline.predict import write_predictions
    from cmdiad.pipeline.routing import Router

    router = Router.load(args.model, device=args.device or "cpu")
    records = records_from_inputs(args.inputs)
    rows = write_predictions(router, records, args.out, progress=Bars())
    for row in rows:
        verdict = "FAIL" if row["anomalous"] else ("pass" if row["anomalous"] is not None else "skipped")
        score = f"{row['score']:.4f}" if row["score"] is not None else "-"
        print(f"{verdict:>7}  {score:>10}  {row['route'] or '-':>4}  {row['sample']}")
    print(f"wrote {args.out}/predictions.json, predictions.csv and heatmaps/")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cmdiad.pipeline.evaluate import recompute_records

    for r in recompute_records(args.run, mode=args.aupro_mode):
        _print_record(r)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cmdiad.viz.report import load_records, write_html_report

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
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cmdiad`` command."""
    p = argparse.ArgumentParser(prog="cmdiad", description="Multimodal (RGB + 3D) anomaly detection, CMDIAD.")
    p.add_argument("--version", action="version", version=f"cmdiad {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("synth", help="generate the synthetic dataset (MVTec 3D-AD layout)")
    s.add_argument("out", type=Path)
    s.add_argument("--categories", help="comma-separated category names")
    s.add_argument("--size", help="image size HxW, e.g. 192x256")
    s.add_argument("--train", type=int)
    s.add_argument("--validation", type=int)
    s.add_argument("--test-good", dest="test_good", type=int)
    s.add_argument("--test-defect", dest="test_defect", type=int, help="test samples per defect type")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("preprocess", help="background removal + padding, written to a new tree")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", type=Path, help="TOML/JSON file of preprocessing thresholds")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a threshold in the cloud's units, e.g. --set plane_distance=5 for clouds in mm "
                        "(fields: border, ransac_distance, ransac_n, ransac_iterations, plane_distance, "
                        "min_border_points, cluster_eps, cluster_min_points, pad_multiple)")
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("convert-eyecandies", help="convert the original Eyecandies release to the MVTec layout")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--categories")
    s.set_defaults(func=cmd_convert_eyecandies)

    s = sub.add_parser("experiment", help="the paper's nine rows on every category of a dataset")
    s.add_argument("data", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--categories", help="comma-separated (default: all)")
    s.add_argument("--methods", help="comma-separated rows, e.g. xyz,rgb,dual,f2f_xyz (default: all nine)")
    s.add_argument("--overwrite", action="store_true",
                   help="delete earlier results in --out (another configuration's) instead of refusing")
    _add_config_args(s)
    s.set_defaults(func=cmd_experiment)

    s = sub.add_parser("demo", help="generate the synthetic set if absent and run the experiment on it")
    s.add_argument("--data", type=Path, default=DEFAULT_DATA)
    s.add_argument("--out", type=Path, default=DEFAULT_RUN)
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.add_argument("--device", default=None)
    s.add_argument("--cache", type=Path, default=None)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("fit", help="fit a deployable detector on one category")
    s.add_argument("data", type=Path)
    s.add_argument("--category", required=True)
    s.add_argument("--method", required=True, choices=["xyz", "rgb", "dual", "f2f", "f2i", "i2f", "mixed"],
                   help="'mixed' writes a model set (dual + MTFI xyz-main + MTFI rgb-main) for mixed inputs")
    s.add_argument("--main", choices=["xyz", "rgb"], help="main modality of an MTFI method")
    s.add_argument("--distill", default="f2f", choices=["f2f", "f2i", "i2f"], help="MTFI design of 'mixed'")
    s.add_argument("--frr", type=float, default=0.01, help="false-reject rate for the threshold")
    s.add_argument("--out", type=Path, required=True)
    _add_config_args(s)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("predict", help="score samples with a fitted model")
    s.add_argument("model", type=Path)
    s.add_argument("inputs", type=Path, nargs="+", help="sample files, sample folders or dataset folders")
    s.add_argument("--out", type=Path, default=Path("predictions"))
    s.add_argument("--device", default=None)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="recompute metrics from an experiment's raw outputs")
    s.add_argument("run", type=Path)
    s.add_argument("--aupro-mode", dest="aupro_mode", default=None, choices=["exact", "official100"],
                   help="AU-PRO mode (default: the one the run used, from its config.json)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="rewrite tables and report.html of an experiment folder")
    s.add_argument("run", type=Path)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmdiad`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
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
