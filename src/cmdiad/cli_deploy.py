"""The deployment verbs of the command line: ``fit``, ``predict``, ``export`` and ``serve``.

Part of the CLI (strings are parsed and results printed here); :mod:`cmdiad.cli` holds the
shared helpers, the other verbs and :func:`cmdiad.cli.main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cmdiad.config import BANK_METHODS
from cmdiad.designs import design_names
from cmdiad.errors import ConfigError


def _fit_specs(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """Route name -> (method, main modality) of the detectors ``fit`` writes."""
    if args.method == "mixed":
        return {"both": ("dual", "both"), "xyz": (args.distill, "xyz"), "rgb": (args.distill, "rgb")}
    main = args.main or {"xyz": "xyz", "rgb": "rgb", "dual": "both"}.get(args.method, "xyz")
    return {"single": (args.method, main)}


def cmd_fit(args: argparse.Namespace) -> int:
    from cmdiad import cli
    from cmdiad.io.layout import check_category, check_model_target

    cfg = cli._experiment_config(args)
    check_category(args.data, args.category)  # these checks import no torch: a typo fails at once
    check_model_target(args.out)
    if not 0.0 < args.frr < 1.0:
        raise ConfigError(f"--frr {args.frr}: must be in (0, 1)")
    from cmdiad.io.mvtec3d import check_record, list_records

    modalities = cli._used_modalities(args.method, None)
    if not cfg.detector.data.skip_bad_samples:  # cheap header/length checks of every file fit will read
        for r in (r for split in ("train", "validation") for r in list_records(args.data, args.category, split)):
            check_record(r, modalities)
    from cmdiad.config import replace
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.detector import Detector
    from cmdiad.pipeline.persist import build_encoder, save_detector, threshold_warning
    from cmdiad.pipeline.routing import Router
    from cmdiad.pipeline.runs import category_splits

    data = cfg.detector.data
    train, val, _ = category_splits(args.data, args.category, with_validation=data.train_with_validation,
                                    skip_bad=data.skip_bad_samples)
    encoder = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(args.cache), modalities=modalities)
    detectors = {}
    for route, (method, main) in _fit_specs(args).items():
        det = Detector(replace(cfg.detector, method=method, main=main), encoder, device=cfg.device)
        report = det.fit(train, validation=val, threshold_frr=args.frr, progress=cli.Bars())
        samples = getattr(det, "threshold_samples", None)
        print(f"fitted {method} ({main} main) on {report.num_train} samples in {report.fit_seconds:.1f} s; "
              f"threshold {det.threshold:.5g} at FRR {args.frr} set by {samples} good "
              f"{'validation' if any(r.label == 0 for r in val) else 'training'} samples")
        fid = report.fidelity or {}
        if line := cli.pixel_fusion_line(report.pixel_fusion, report.pixel_setting, fid.get("r2"), fid.get("r2_se")):
            print(line)
        note = threshold_warning(samples, args.frr)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        detectors[route] = det
    if "single" in detectors:
        save_detector(detectors["single"], args.out)
    else:
        Router(detectors).save(args.out)
    print(f"model written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cmdiad import cli
    from cmdiad.io.layout import check_model_folder
    from cmdiad.pipeline.inputs import items_from_inputs
    from cmdiad.pipeline.onnx_model import load_model
    from cmdiad.pipeline.predict import check_output, clear_output, predict
    from cmdiad.serve.worker import NoFeatureCache

    check_model_folder(args.model)
    splits = tuple(s for s in args.splits.split(",") if s)
    items = items_from_inputs(args.inputs, splits=splits)  # before loading the model: cheap and fails fast
    check_output(args.out, overwrite=args.overwrite)
    # each file is scored once: an in-memory feature cache would only grow with the batch
    router = load_model(args.model, device=args.device or "cpu", cache=NoFeatureCache())
    clear_output(args.out)
    outcome = predict(router, items, args.out, progress=cli.Bars())
    for row in outcome.rows:
        verdict = "FAIL" if row["anomalous"] else ("pass" if row["anomalous"] is not None else "skipped")
        score = f"{row['score']:.4f}" if row["score"] is not None else "-"
        print(f"{verdict:>7}  {score:>10}  {row['route'] or '-':>4}  {row['sample']}")
    for path, reason in outcome.problems:
        print(f"bad file {path}: {reason}", file=sys.stderr)
    print(f"scored {outcome.scored} of {len(outcome.rows)} samples; wrote {args.out}/predictions.json, "
          "predictions.csv and heatmaps/")
    if outcome.scored == 0:
        print("cmdiad: error: no sample could be scored", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cmdiad.pipeline.export import export_onnx
    from cmdiad.pipeline.persist import load_detector

    if (args.model / "router.json").is_file():
        raise ConfigError(f"{args.model} is a model set; export one of its detector folders (e.g. {args.model}/rgb)")
    det = load_detector(args.model)
    out = export_onnx(det, args.out, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        from cmdiad.pipeline.inputs import records_from_inputs
        from cmdiad.pipeline.onnx_model import load_onnx_model

        records = [r for r in records_from_inputs(args.check) if r.rgb_path is not None]
        ref, got = det.score(records), load_onnx_model(out).score(records)
        image = float((ref.image_score - got.image_score).abs().max())
        amap = float((ref.anomaly_map - got.anomaly_map).abs().max())
        print(f"onnxruntime vs PyTorch on {len(records)} samples: max |diff| image score {image:.3g}, "
              f"anomaly map {amap:.3g}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cmdiad.pipeline.onnx_model import load_model
    from cmdiad.serve.app import ServeConfig, create_app
    from cmdiad.serve.worker import NoFeatureCache

    try:
        cfg = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pending=args.queue,
                          keep_parts=args.keep, torch_threads=args.threads, max_batch=args.batch,
                          batch_wait_ms=args.batch_wait_ms)
    except ValueError as exc:
        raise ConfigError(f"serve: {exc}") from None
    # Loaded before binding the port so that a bad model is a CLI error; no feature cache: every upload is new.
    model = load_model(args.model, args.device or "cpu", threads=args.threads, cache=NoFeatureCache())
    print(f"serving {args.model} (routes {', '.join(sorted(model.detectors))}) on http://{args.host}:{args.port}/")
    uvicorn.run(create_app(lambda: model, cfg, name=str(args.model)), host=args.host, port=args.port,
                log_level="warning")
    return 0


def add_deploy_parsers(sub, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``fit``, ``predict``, ``export`` and ``serve`` subcommands."""
    s = sub.add_parser("fit", help="fit a deployable detector on one category")
    s.add_argument("data", type=Path, help="dataset root (MVTec 3D-AD layout)")
    s.add_argument("--category", required=True, help="category folder under the dataset root to fit on")
    s.add_argument("--method", required=True, choices=[*BANK_METHODS, *design_names(), "mixed"],
                   help="'mixed' writes a model set (dual + MTFI xyz-main + MTFI rgb-main) for mixed inputs")
    s.add_argument("--main", choices=["xyz", "rgb"], help="main modality of an MTFI method (default: xyz)")
    s.add_argument("--distill", default="f2f", choices=list(design_names()), help="MTFI design of 'mixed'")
    s.add_argument("--frr", type=float, default=0.01,
                   help="false-reject rate of good validation samples that sets the threshold")
    s.add_argument("--out", type=Path, required=True,
                   help="model folder to write (an earlier model there is replaced as a whole)")
    add_config_args(s)
    s.set_defaults(func=cmd_fit)
    s = sub.add_parser("predict", help="score samples with a fitted model")
    s.add_argument("model", type=Path,
                   help="model folder written by 'cmdiad fit', or an .onnx file from 'cmdiad export'")
    s.add_argument("inputs", type=Path, nargs="+",
                   help="files, plain folders of files, sample folders (rgb/, xyz/), category or dataset folders")
    s.add_argument("--out", type=Path, default=Path("predictions"),
                   help="output folder (an earlier predict output there is replaced)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that is not a predict output (its other files are kept)")
    s.add_argument("--splits", default="test", help="comma-separated splits read from category/dataset folders")
    s.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    s.set_defaults(func=cmd_predict)
    s = sub.add_parser("export", help="export an RGB-only detector (rgb, f2f_rgb, i2f_rgb) to ONNX")
    s.add_argument("model", type=Path, help="a detector folder written by 'cmdiad fit'")
    s.add_argument("out", type=Path, help="the .onnx file to write")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    s.add_argument("--check", type=Path, nargs="+", help="samples to compare onnxruntime with PyTorch on")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="HTTP scoring service for a model folder or an exported .onnx file")
    s.add_argument("model", type=Path, help="model folder, model set or exported .onnx file")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--device", default=None, help="torch device of a model folder (default: cpu)")
    s.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads")
    s.add_argument("--batch", type=int, default=1,
                   help="most queued parts scored in one forward pass (default 1: no gain per part on 2 cores)")
    s.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float, default=2.0,
                   help="longest wait for a batch to fill once a part is queued")
    s.add_argument("--queue", type=int, default=8, help="requests in flight before 503")
    s.add_argument("--keep", type=int, default=50, help="last parts kept with their heatmaps")
    s.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=64.0,
                   help="largest request body accepted (413 above)")
    s.set_defaults(func=cmd_serve)
