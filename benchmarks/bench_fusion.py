"""Does a second stream ever make a result worse? Per-stream vs fused metrics, per defect type.

For every multi-stream row (``dual`` and the six MTFI rows) of every category, fits the row
with the default preset as ``cmdiad experiment`` does (MTFI rows use the preset's distillers: with
``distill.pooled``, one per row trained on every category's training samples by
:func:`cmdiad.pipeline.runs.pooled_distillers`), scores the held-out validation good samples and
the test samples per stream, and compares the fused I-AUROC / P-AUROC of each fusion rule with the better of the
row's streams alone, for each defect type (test/good against that type only).

    python benchmarks/bench_fusion.py DATA [DATA ...] [--rules sum,calibrated_max] [--write]

Stream scores are cached in ``benchmarks/.fusion_cache`` (keyed by dataset, category, row and the
resolved detector config, pooled distillers included) so fusion rules can be compared without
refitting. ``--write`` publishes the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, command_line, machine_description, publish  # noqa: E402

from cmdiad.config import ExperimentConfig, FusionConfig, from_dict, merge, to_dict  # noqa: E402
from cmdiad.features.cache import FeatureCache  # noqa: E402
from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.classification import auroc  # noqa: E402
from cmdiad.pipeline.detector import Detector  # noqa: E402
from cmdiad.pipeline.mtfi import earned_fusion_config  # noqa: E402
from cmdiad.pipeline.persist import build_encoder  # noqa: E402
from cmdiad.pipeline.presets import preset  # noqa: E402
from cmdiad.pipeline.runs import PooledDistiller, category_splits, pooled_distillers  # noqa: E402
from cmdiad.pipeline.streams import parse_row, streams_for  # noqa: E402
from cmdiad.scoring.fusion import build_fuser, with_partial_rows  # noqa: E402

ROWS = ("dual", "f2f_xyz", "f2i_xyz", "i2f_xyz", "f2f_rgb", "f2i_rgb", "i2f_rgb")
CACHE = Path(__file__).resolve().parent / ".fusion_cache"
log = logging.getLogger("bench_fusion")
_ENCODERS: dict = {}
_SHARED: dict = {}  # by config: see shared_banks
_POOLED: dict = {}  # by config and row
_SETS: list[str] = []  # --set KEY=VALUE overrides of the detector config (as cmdiad's, under "detector.")


def _config(root: Path) -> ExperimentConfig:
    from cmdiad.cli import _apply_sets
    from cmdiad.io.mvtec3d import native_size

    h, w = native_size(root)  # each set at its own size, as `cmdiad demo` runs it
    data = merge(preset("default"), {"detector": {"data": {"image_size": [h, w]}}})
    _apply_sets(data, _SETS, lambda key: "detector." + key)
    return from_dict(ExperimentConfig, data)


def _stack(per: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    image = torch.stack([per[n][0] for n in names], dim=1).numpy()
    maps = torch.stack([per[n][1] for n in names], dim=-1).numpy()
    return image, maps


def _cache_tag(root: Path, category: str, row: str, cfg: ExperimentConfig) -> str:
    """Cache key: dataset, category, row and the resolved detector config (so a preset change refits)."""
    resolved = to_dict(cfg.detector)  # the fusion rule does not change stream scores; its stream weights do
    resolved["fusion"] = {k: v for k, v in resolved["fusion"].items() if k.endswith("_weight")}
    detector = json.dumps(resolved, sort_keys=True)
    return hashlib.sha256(f"v2|{root.resolve()}|{category}|{row}|{detector}".encode()).hexdigest()[:16]


def _encoder(root: Path, cfg: ExperimentConfig):
    if root not in _ENCODERS:  # one encoder per dataset: features are computed once
        _ENCODERS[root] = build_encoder(cfg.detector, device="cpu", cache=FeatureCache(CACHE / "features"))
    return _ENCODERS[root]


def use_sets(sets: list[str]) -> None:
    """Fit under these ``--set KEY=VALUE`` overrides of the detector config from now on."""
    _SETS[:] = sets


def shared_banks(root: Path, category: str, cfg: ExperimentConfig) -> dict:
    """The real sensors' banks that the rows of one category share, for one resolved config
    (so other ``--set`` overrides in the same process never reuse them)."""
    return _SHARED.setdefault(_cache_tag(root, category, "*", cfg), {})


def _pooled(root: Path, cfg: ExperimentConfig, row: str) -> PooledDistiller | None:
    """The row's distiller trained on every category's training samples (None: per-category or no MTFI)."""
    if not cfg.detector.distill.pooled:
        return None
    tag = _cache_tag(root, "*", "*", cfg)
    if (tag, row) not in _POOLED:
        data = cfg.detector.data
        train = {c: category_splits(root, c, with_validation=data.train_with_validation,
                                    skip_bad=data.skip_bad_samples)[0] for c in list_categories(root)}
        _POOLED.update({(tag, r): p for r, p in pooled_distillers(cfg, _encoder(root, cfg), train, [row],
                                                                  CACHE / "distillers" / tag).items()})
    return _POOLED.get((tag, row))


def stream_scores(root: Path, category: str, row: str, twins: Path | None = None) -> dict[str, np.ndarray]:
    """Per-stream validation and test scores of one row (cached on disk).

    With ``twins`` (a null-twin set of ``root``: ``cmdiad synth --null-twins``), the test parts
    are the twin set's, scored by the same fit on ``root``'s training and validation parts: each
    stream's exact prior at the defects' places. Use :func:`twin_scores`, which checks the pairing.
    """
    cfg = _config(root)
    tag = _cache_tag(root, category, row, cfg)
    if twins is not None:
        tag += "." + hashlib.sha256(str(twins.resolve()).encode()).hexdigest()[:8]
    path = CACHE / f"{tag}.npz"
    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    method, main = parse_row(row)
    dcfg = replace(cfg.detector, method=method, main=main)
    encoder = _encoder(root, cfg)
    pooled = _pooled(root, cfg, row)
    torch.manual_seed(dcfg.seed)
    data = cfg.detector.data
    train, val, test = category_splits(root, category, with_validation=data.train_with_validation,
                                       skip_bad=data.skip_bad_samples)
    det = Detector(dcfg, encoder, shared_banks=shared_banks(root, category, cfg),
                   hallucinator=pooled.hallucinator if pooled is not None else None)
    report = det.fit(train, validation=val)
    if report.fidelity is not None and twins is None:
        _fidelity_path(root, category, row, cfg).write_text(json.dumps(report.fidelity))
    if twins is not None:
        test = category_splits(twins, category, with_validation=data.train_with_validation,
                               skip_bad=data.skip_bad_samples)[2]
    names = [s.name for s in det.streams]
    v_img, v_map = _stack(det.stream_scores(val), names)
    t_img, t_map = _stack(det.stream_scores(test), names)
    out = {
        "names": np.array(names), "val_image": v_img, "val_maps": v_map.astype(np.float32),
        "test_image": t_img, "test_maps": t_map.astype(np.float32),
        "labels": np.array([r.label for r in test]), "defects": np.array([r.defect for r in test]),
        "masks": encoder.masks(test).numpy(),
    }  # fmt: skip
    CACHE.mkdir(exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def twin_scores(root: Path, twins: Path, category: str, row: str) -> dict[str, np.ndarray]:
    """:func:`stream_scores` of ``twins``' test parts by ``root``'s fit, after checking that the
    twin set pairs with ``root``: the same test parts by defect type, and the good ones scored
    exactly alike (their files are the same bytes in a null-twin set of the same seed and size)."""
    real, twin = stream_scores(root, category, row), stream_scores(root, category, row, twins)
    if not np.array_equal(real["defects"], twin["defects"]):
        raise SystemExit(f"{twins / category}: its test parts differ from {root / category}'s; generate the "
                         "twins with the set's seed, size and counts (cmdiad synth --null-twins)")
    good = real["defects"] == "good"
    for key in ("test_image", "test_maps"):
        if not np.array_equal(real[key][good], twin[key][good]):
            raise SystemExit(f"{twins / category}: its good test parts score differently from {root / category}'s; "
                             "it is not a null-twin set of it")
    return twin


def calibration_scores(root: Path, category: str, row: str, folds: int) -> dict[str, np.ndarray]:
    """Cross-fitted image scores of the training parts per real stream of the row, as the
    detector's fit adds them to the fusion's calibration with ``fusion.calibration_folds = folds``
    (cached on disk beside the stream scores)."""
    cfg = _config(root)
    path = CACHE / f"{_cache_tag(root, category, row, cfg)}.folds{folds}.npz"
    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    method, main = parse_row(row)
    fusion = replace(cfg.detector.fusion, calibration_folds=folds)
    det = Detector(replace(cfg.detector, method=method, main=main, fusion=fusion), _encoder(root, cfg),
                   shared_banks=shared_banks(root, category, cfg))
    data = cfg.detector.data
    train = category_splits(root, category, with_validation=data.train_with_validation,
                            skip_bad=data.skip_bad_samples)[0]
    out = {name: v.numpy() for name, v in det.calibration_scores(train).items()}
    CACHE.mkdir(exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def _fidelity_path(root: Path, category: str, row: str, cfg: ExperimentConfig) -> Path:
    CACHE.mkdir(exist_ok=True)
    return CACHE / f"{_cache_tag(root, category, row, cfg)}.fidelity.json"


def fidelity_of(root: Path, category: str, row: str) -> dict | None:
    """The row's hallucination fidelity on the category's validation samples, as its fit measures
    it (cached beside the scores; measured again from the pooled distiller for a cache written
    before, or before ``r2_se``)."""
    cfg = _config(root)
    path = _fidelity_path(root, category, row, cfg)
    if path.is_file() and "r2_se" in (cached := json.loads(path.read_text())):
        return cached
    pooled = _pooled(root, cfg, row)
    if pooled is None:
        raise FileNotFoundError(f"{path} is missing; delete the row's cached scores to refit it")
    method, main = parse_row(row)
    data = cfg.detector.data
    val = category_splits(root, category, with_validation=data.train_with_validation, skip_bad=data.skip_bad_samples)[1]
    det = Detector(replace(cfg.detector, method=method, main=main), _encoder(root, cfg),
                   hallucinator=pooled.hallucinator)
    fid = det.hallucination_fidelity(val)
    path.write_text(json.dumps(fid))
    return fid


MAIN_ONLY = float("-inf")
"""The pixel "offset" of a hallucinated map left out of the anomaly map (``pixel_combine = "real"``)."""


def label_free_offset(cfg: FusionConfig) -> float:
    """The candidate a fit's label-free pixel setting ``cfg`` is: ``MAIN_ONLY`` when it leaves the
    hallucinated map out (fidelity r2 below ``fidelity_floor`` beyond its scatter), else its offset."""
    return MAIN_ONLY if cfg.pixel_combine == "real" else cfg.pixel_offset


def fuse(z: np.ndarray, offset: float) -> np.ndarray:
    """Calibrated maps ``(..., 2)`` (main, hallucinated) fused with the hallucinated one raised by ``offset``."""
    return z[..., 0] if offset == MAIN_ONLY else np.maximum(z[..., 0], z[..., 1] + offset)


def per_defect_auroc(values: np.ndarray, truth: np.ndarray, d: dict, what: str) -> dict[str, float]:
    """``{defect: AUROC of values against truth over test/good + that defect}`` (``what``: image or pixel)."""
    out = {}
    good = d["defects"] == "good"
    for defect in sorted(set(d["defects"].tolist()) - {"good"}):
        keep = good | (d["defects"] == defect)
        out[defect] = auroc(values[keep].reshape(-1), truth[keep].reshape(-1), what)
    return out


def _per_defect(image: np.ndarray, maps: np.ndarray, d: dict) -> dict[str, tuple[float, float]]:
    """``{defect: (I-AUROC good vs defect, P-AUROC over good + defect pixels)}``."""
    i, p = per_defect_auroc(image, d["labels"], d, "image"), per_defect_auroc(maps, d["masks"], d, "pixel")
    return {defect: (i[defect], p[defect]) for defect in i}


def preset_rule(name: str = "default") -> str:
    """A preset's fusion as a rule string (see :func:`fuser_config`): what ``cmdiad experiment`` fits with it."""
    fusion = dict(preset(name)["detector"]["fusion"])
    kind = fusion.pop("kind")
    fusion.pop("fit_on", None)  # every rule here is fitted on the validation parts
    return kind + (":" + ";".join(f"{k}={v}" for k, v in fusion.items()) if fusion else "")


def fuser_config(rule: str) -> FusionConfig:
    """The FusionConfig of a rule: ``kind``, ``kind:pixel_calibration`` or ``kind:field=value,...``."""
    name, _, rest = rule.partition(":")
    fields: dict = {"kind": name, "fit_on": "validation"}
    for part in filter(None, rest.split(";")):
        key, eq, value = part.partition("=")
        if not eq:
            fields["pixel_calibration"] = key
            continue
        default = getattr(FusionConfig(), key)
        if isinstance(default, bool):  # bool("False") is True
            if value.lower() not in ("true", "false"):
                raise ValueError(f"rule {rule!r}: {key} must be true or false, not {value!r}")
            fields[key] = value.lower() == "true"
        else:
            fields[key] = type(default)(value)
    return FusionConfig(**fields)


def hallucinated_columns(root: Path, row: str, d: dict) -> list[bool]:
    """Per cached column, whether it is a hallucinated stream (the row's streams, in the cache's order)."""
    method, main = parse_row(row)
    streams = streams_for(replace(_config(root).detector, method=method, main=main))
    if [s.name for s in streams] != [str(n) for n in d["names"]]:
        raise ValueError(f"{row}: cached streams {list(d['names'])} are not {[s.name for s in streams]}")
    return [s.hallucinated for s in streams]


def fused(d: dict, rule: str, hallucinated: list[bool], fid: dict | None,
          folds: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test image scores and maps fused by ``rule`` (see :func:`fuser_config`) fitted on validation.

    With a hallucinated stream, the settings are what the detector makes of them given the
    stream's fidelity ``fid`` (:func:`~cmdiad.pipeline.mtfi.earned_fusion_config`). ``folds``
    (:func:`calibration_scores`) join the image rows as the detector adds them: NaN in the
    columns they do not score.
    """
    cfg = fuser_config(rule)
    fuser = build_fuser(earned_fusion_config(cfg, fid) if any(hallucinated) else cfg)
    k = d["val_image"].shape[1]
    image_rows = with_partial_rows(d["val_image"], [str(n) for n in d["names"]], folds or {})
    fuser.fit(torch.as_tensor(image_rows), torch.as_tensor(d["val_maps"].reshape(-1, k)), hallucinated)
    image = fuser.image_scores(torch.as_tensor(d["test_image"])).numpy()
    maps = fuser.pixel_scores(torch.as_tensor(d["test_maps"].reshape(-1, k))).numpy()
    return image, maps.reshape(d["test_maps"].shape[:-1])


def _folds(root: Path, category: str, row: str, rule: str) -> dict[str, np.ndarray] | None:
    """The cross-fitted training scores a rule calibrates with (None: validation parts only)."""
    folds = fuser_config(rule).calibration_folds
    return calibration_scores(root, category, row, folds) if folds else None


def hanley_mcneil_se(a: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC ``a`` measured on ``n_pos`` positives and ``n_neg`` negatives (Hanley-McNeil)."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)
    return float(np.sqrt(max(var, 0.0) / (n_pos * n_neg)))


def informative(best: float, n_defect: int, n_good: int, chance: float = 0.5) -> bool:
    """Whether the better stream's AUROC is distinguishable from ``chance``: ``best - 1.96 SE > chance``
    (0.5, or a map's placebo: what its spatial prior alone scores)."""
    return best - 1.96 * hanley_mcneil_se(best, n_defect, n_good) > chance


def compare(roots: list[Path], rules: list[str],
            twins: dict[Path, Path] | None = None) -> tuple[list[list], list[tuple[float, float]] | None]:
    """Rows ``[dataset, category, row, defect, n_good, n_defect, best stream I, P, rule1 I, P, ...]``
    and, with ``twins`` (``{dataset: its null-twin set}``), for each row the exact priors of its
    better streams (the better stream's I-AUROC and the better stream's P-AUROC on the twins)."""
    table, priors = [], []
    for root in roots:
        for category in list_categories(root):
            for row in ROWS:
                log.info("%s %s %s", root.name, category, row)
                d = stream_scores(root, category, row)
                per_stream = [_per_defect(d["test_image"][:, j], d["test_maps"][..., j], d)
                              for j in range(d["test_image"].shape[1])]
                if twins:
                    tw = twin_scores(root, twins[root], category, row)
                    per_twin = [_per_defect(tw["test_image"][:, j], tw["test_maps"][..., j], d)
                                for j in range(tw["test_image"].shape[1])]
                roles = hallucinated_columns(root, row, d)
                fid = fidelity_of(root, category, row) if any(roles) else None
                per_rule = [_per_defect(*fused(d, r, roles, fid, _folds(root, category, row, r)), d) for r in rules]
                n_good = int((d["defects"] == "good").sum())
                for defect in per_stream[0]:
                    best_i = max(s[defect][0] for s in per_stream)
                    best_p = max(s[defect][1] for s in per_stream)
                    cells = [x for r in per_rule for x in r[defect]]
                    n_defect = int((d["defects"] == defect).sum())
                    table.append([root.name, category, row, defect, n_good, n_defect, best_i, best_p, *cells])
                    if twins:
                        ji = max(range(len(per_stream)), key=lambda j: per_stream[j][defect][0])
                        jp = max(range(len(per_stream)), key=lambda j: per_stream[j][defect][1])
                        priors.append((per_twin[ji][defect][0], per_twin[jp][defect][1]))
    return table, (priors if twins else None)


def _shortfalls(table: list[list], j: int) -> tuple[np.ndarray, ...]:
    """Fused - best for rule ``j`` (image, pixel) and the informative masks (image, pixel) of ``table``'s cases.

    A pixel case is called informative with the image counts as sample sizes: the pixels of one
    image are strongly correlated, so their count would overstate the evidence.
    """
    arr = np.array([r[6:] for r in table], dtype=float).reshape(len(table), -1)
    inf_i = np.array([informative(r[6], r[5], r[4]) for r in table], dtype=bool)
    inf_p = np.array([informative(r[7], r[5], r[4]) for r in table], dtype=bool)
    return arr[:, 2 + 2 * j] - arr[:, 0], arr[:, 3 + 2 * j] - arr[:, 1], inf_i, inf_p


def _seen(table: list[list], priors: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Masks (image, pixel) of ``table``'s cases whose better stream sees the defect type beyond its
    exact prior: its AUROC exceeds its AUROC on the null twins by 1.96 Hanley-McNeil standard errors."""
    return tuple(np.array([informative(r[6 + m], r[5], r[4], chance=q[m]) for r, q in zip(table, priors, strict=True)],
                          dtype=bool) for m in (0, 1))  # fmt: skip


def _counts(di: np.ndarray, dp: np.ndarray, inf_i: np.ndarray, inf_p: np.ndarray) -> list[str]:
    return [f"{(di < -0.02).sum()}/{len(di)}", f"{(di[inf_i] < -0.02).sum()}/{inf_i.sum()}",
            f"{(dp < -0.01).sum()}/{len(dp)}", f"{(dp[inf_p] < -0.01).sum()}/{inf_p.sum()}"]


def summary(table: list[list], rules: list[str], priors: list[tuple[float, float]] | None = None) -> list[str]:
    """Markdown: per dataset, row group and rule: worst and mean shortfall, raw and informative
    violations, and with ``priors`` (:func:`compare`'s) the violations beyond the exact prior."""
    extra = (" I: cases < -0.02 beyond the exact prior | P: cases < -0.01 beyond the exact prior |", "---:|---:|")
    lines = ["| data | rows | rule | I: worst | I: mean | I: informative mean | I: cases < -0.02 | "
             "I: informative cases < -0.02 | P: worst | P: mean | P: informative mean | P: cases < -0.01 | "
             "P: informative cases < -0.01 |" + (extra[0] if priors else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + (extra[1] if priors else "")]
    for data in sorted({r[0] for r in table}):
        for group, rows in (("dual", {"dual"}), ("MTFI", set(ROWS) - {"dual"})):
            keep = [i for i, r in enumerate(table) if r[0] == data and r[2] in rows]
            part = [table[i] for i in keep]
            if not part:
                continue
            seen = _seen(part, [priors[i] for i in keep]) if priors else None
            for j, rule in enumerate(rules):
                di, dp, inf_i, inf_p = _shortfalls(part, j)
                c = _counts(di, dp, inf_i, inf_p)
                line = (f"| {data} | {group} | {rule} | {di.min():+.3f} | {di.mean():+.3f} | "
                        f"{di[inf_i].mean():+.4f} | {c[0]} | {c[1]} | {dp.min():+.3f} | {dp.mean():+.3f} | "
                        f"{dp[inf_p].mean():+.4f} | {c[2]} | {c[3]} |")
                if seen is not None:
                    line += (f" {(di[seen[0]] < -0.02).sum()}/{seen[0].sum()} | "
                             f"{(dp[seen[1]] < -0.01).sum()}/{seen[1].sum()} |")
                lines.append(line)
    return lines


def per_row(table: list[list], rules: list[str]) -> list[str]:
    """Markdown: per row (both datasets), mean fused - best stream and the shortfalls, raw / informative."""
    head = "| row | " + " | ".join(f"{r}: I mean, cases < -0.02 (informative) | {r}: P mean, cases < -0.01 "
                                   "(informative)" for r in rules) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(rules))]
    for row in ROWS:
        part = [r for r in table if r[2] == row]
        if not part:
            continue
        cells = []
        for j in range(len(rules)):
            di, dp, inf_i, inf_p = _shortfalls(part, j)
            c = _counts(di, dp, inf_i, inf_p)
            cells += [f"{di.mean():+.3f}, {c[0]} ({c[1]})", f"{dp.mean():+.3f}, {c[2]} ({c[3]})"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def detail(table: list[list], rules: list[str]) -> list[str]:
    """Markdown: every (dataset, category, row, defect) with best stream and each rule (* = informative)."""
    head = "| data | category | row | defect | good/defect | best I | best P | " + " | ".join(
        f"{r} I | {r} P" for r in rules) + " |"
    lines = [head, "|" + "---|" * (7 + 2 * len(rules))]
    for r in table:
        flags = ["*" if informative(r[6 + m], r[5], r[4]) else "" for m in (0, 1)]
        cells = [*r[:4], f"{r[4]}/{r[5]}", f"{r[6]:.3f}{flags[0]}", f"{r[7]:.3f}{flags[1]}",
                 *(f"{x:.3f}" for x in r[8:])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def calibration_table(roots: list[Path], folds: int) -> list[str]:
    """Markdown: per dataset, category and real sensor, the mean and std of its image scores on the
    validation parts, on the training parts cross-fitted in ``folds`` folds, and on the good test parts."""
    lines = ["| data | category | sensor | validation: n, mean, std | cross-fitted training: n, mean, std | "
             "good test: n, mean, std |", "|---|---|---|---|---|---|"]
    for root in roots:
        for category in list_categories(root):
            d = stream_scores(root, category, "dual")
            cross = calibration_scores(root, category, "dual", folds)
            good = d["defects"] == "good"
            for j, name in enumerate(str(n) for n in d["names"]):
                cells = [f"{len(x)}, {x.mean():.3f}, {x.std():.3f}"
                         for x in (d["val_image"][:, j], cross[name], d["test_image"][good, j])]
                lines.append(f"| {root.name} | {category} | {name} | " + " | ".join(cells) + " |")
    return lines


def add_twins(p: argparse.ArgumentParser) -> None:
    """The ``--twins`` option of the benchmarks that count shortfalls beyond the exact prior."""
    p.add_argument("--twins", type=Path, nargs="+", metavar="TWIN",
                   help="a null-twin set of each DATA (cmdiad synth --null-twins), in the same order: also count "
                        "the shortfalls where the better stream sees the defect beyond its exact prior")


def twins_of(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[Path, Path] | None:
    """``{DATA: its twin set}`` from ``--twins`` (None without it); one set per DATA or a usage error."""
    if not args.twins:
        return None
    if len(args.twins) != len(args.data):
        p.error(f"--twins needs one set per DATA ({len(args.data)}), got {len(args.twins)}")
    return dict(zip(args.data, args.twins, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--rules", default="sum,calibrated_max",
                   help="fusers, e.g. sum,calibrated_max:zscore ('' with --calibration: that table only)")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    p.add_argument("--detail", action="store_true", help="print every case")
    p.add_argument("--describe", default="", help="how the datasets were made, for the published section")
    p.add_argument("--calibration", type=int, default=0, metavar="FOLDS",
                   help="also print the real sensors' image-score moments on validation, cross-fitted "
                        "training (in FOLDS folds) and good test parts")
    add_twins(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="detector config override (as cmdiad's --set, e.g. rgb.aggregation=per_stage); "
                        "not with --write, which publishes the default preset")
    args = p.parse_args()
    if args.set and args.write:
        p.error("--write publishes the default preset's numbers; drop --set")
    use_sets(args.set)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    rules = [r for r in args.rules.split(",") if r]
    if args.write and not rules:
        p.error("--write publishes the rules' table; name --rules")
    twins = twins_of(p, args)
    if rules:
        table, priors = compare(args.data, rules, twins)
        lines = [*summary(table, rules, priors), "", *per_row(table, rules)]
        print("\n".join(lines))
        if args.detail:
            print("\n".join(detail(table, rules)))
    if args.calibration:
        print("\n".join(calibration_table(args.data, args.calibration)))
    if args.write:
        body = ["## Fusion never hurts", "", f"Command: `{command_line()}` (default preset; datasets made with "
                f"`cmdiad synth`). {machine_description()}.", "", args.describe, "",
                "Fused minus the better stream of the row, per (dataset, category, row, defect type): "
                "I = I-AUROC of test/good against that type, P = P-AUROC over the pixels of good + that type. "
                "A case is *informative* when the better stream is distinguishable from chance: its AUROC minus "
                "1.96 Hanley-McNeil standard errors, at the case's numbers of good and defective test images, "
                "is above 0.5 (for P-AUROC too: the pixels of one image are not independent evidence). On the "
                "other cases both streams are near chance, and the better of two noisy AUROCs (12 good x 6 "
                "defective images: one swapped pair moves I-AUROC by 0.014) is a maximum of noise that no "
                "label-free rule can be held to. Raw counts first, informative ones next to them."
                + (" The last two columns count the shortfalls again on the cases whose better stream sees the "
                   "defect beyond its exact prior: its AUROC exceeds its AUROC on the set's null twins (`--twins`: "
                   "every defective test part rendered without its defect, `cmdiad synth --null-twins`, scored by "
                   "the same fit) by 1.96 Hanley-McNeil standard errors." if args.twins else ""),
                "", *lines]
        publish("\n".join(body), DOC)


if __name__ == "__main__":
    main()
