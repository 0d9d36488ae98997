"""A small RGB + 3D anomaly dataset in the exact MVTec 3D-AD layout.

Scanner model: a pinhole camera looks down at a slightly tilted table (about 30 cm away) with
one object on it. The depth map (table depth minus object height) is back-projected to an
organized xyz cloud in **metres**, like MVTec 3D-AD, so preprocessing defaults (4-6 mm) apply
unchanged. Depth noise is added, and invalid points are stored as ``(0, 0, 0)``: the scanner's
invalid side columns, random dropouts and steep (grazing) surfaces. The image is Lambertian
shading from the surface normals times the object's texture, plus sensor noise.

Defects (see :mod:`cmdiad.synthetic.defects`) live in one modality or in both. For
geometry-only defects (bump, dent) the RGB shading is rendered from the *defect-free* normals,
so the defect is invisible in RGB (``SynthConfig.geometry_shading`` lets some of their shading
through). Masks are pixel-exact: exactly the pixels whose xyz or RGB
the defect changed. Everything is a deterministic function of the sample's seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmdiad.io.image import write_mask, write_rgb
from cmdiad.io.pointcloud import write_xyz
from cmdiad.synthetic.defects import DEFECT_TYPES, Defect, make_defect
from cmdiad.synthetic.shapes import BACKGROUND_COLOR, SHAPES, smooth_noise

logger = logging.getLogger(__name__)

_TABLE_DISTANCE = 0.30
"""Camera-to-table distance in metres."""
_FIELD_OF_VIEW = 0.16
"""Table width seen by the longer image side, in metres."""
_LIGHT = np.array([-0.3, -0.5, -1.0]) / np.linalg.norm([-0.3, -0.5, -1.0])
_AMBIENT = 0.35


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`generate_dataset` writes."""

    categories: tuple[str, ...] = ("ring", "tile", "dome")
    """Object categories (keys of ``cmdiad.synthetic.shapes.SHAPES``)."""
    defects: tuple[str, ...] = DEFECT_TYPES
    """Defect types of every category; grey values 255, 254, ... in this order."""
    image_size: tuple[int, int] = (192, 192)
    """(H, W) of every image and cloud; non-square is allowed."""
    train: int = 30
    """Training samples per category."""
    validation: int = 6
    """Validation samples per category."""
    test_good: int = 12
    """Good test samples per category."""
    test_per_defect: int = 6
    """Test samples per category and defect type."""
    validation_per_defect: int = 0
    """Labelled defective validation samples (``validation/<defect>/`` with masks) per category and
    defect type; every other sample is the same whatever this is."""
    seed: int = 0
    """Seed of the whole dataset."""
    depth_noise: float = 1e-4
    """Standard deviation of the depth noise, metres."""
    rgb_noise: float = 2.0
    """Standard deviation of the image noise, grey levels."""
    dropout_rate: float = 0.002
    """Fraction of points randomly missing."""
    max_tilt: float = 0.05
    """Largest table tilt about each axis, radians."""
    null_twins: bool = False
    """Render every defective sample without its defect: the same object, pose, noise and observed
    points as with it, and the mask it would have. A run on such a set scores, per defect type,
    exactly what its maps give a defect they cannot see (the exact placebo: the maps' prior at
    the defects' true places); every good and training sample is the same as without it."""
    geometry_shading: float = 0.0
    """How much of its shading change a geometry-only defect (bump, dent) puts in the image: 0
    renders the image from the defect-free normals, so the camera cannot see the defect at all;
    1 is the Lambertian shading of the deformed surface. In between, the shading inside the
    footprint moves that fraction of the way. Cracks and holes always shade fully."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.categories if c not in SHAPES] + [
            d for d in self.defects if d not in DEFECT_TYPES
        ]
        if unknown or not self.categories:
            raise ValueError(
                f"unknown categories/defects {unknown}; have {sorted(SHAPES)} and {DEFECT_TYPES}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError("image_size must be (H, W) with both sides >= 16")
        counts = (self.train, self.validation, self.test_good, self.test_per_defect, self.validation_per_defect)
        if min(counts) < 0 or self.train < 1:
            raise ValueError("sample counts must be >= 0 and train >= 1")
        if min(self.depth_noise, self.rgb_noise, self.dropout_rate, self.max_tilt) < 0:
            raise ValueError("noise levels must be >= 0")
        if not 0.0 <= self.geometry_shading <= 1.0:
            raise ValueError(f"geometry_shading must lie in [0, 1], got {self.geometry_shading}")

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return max(self.image_size) * _TABLE_DISTANCE / _FIELD_OF_VIEW


def _rays(cfg: SynthConfig) -> np.ndarray:
    """``(H, W, 3)`` viewing rays with unit z, through pixel centres (read-only, cached)."""
    return _cached_rays(tuple(cfg.image_size), cfg.focal)


@functools.lru_cache(maxsize=8)
def _cached_rays(size: tuple[int, int], focal: float) -> np.ndarray:
    h, w = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - (w - 1) / 2) / focal, (v - (h - 1) / 2) / focal, np.ones_like(u)], axis=-1)
    rays.flags.writeable = False
    return rays


def _normals(xyz: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` unit normals of an organized surface, facing the camera (z < 0)."""
    n = np.cross(np.gradient(xyz, axis=1), np.gradient(xyz, axis=0))
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    return np.where(n[..., 2:3] > 0, -n, n)


def _shade(normals: np.ndarray) -> np.ndarray:
    """``(H, W)`` Lambertian intensity in ``[ambient, 1]``."""
    return _AMBIENT + (1 - _AMBIENT) * np.clip(normals @ _LIGHT, 0.0, None)


@dataclass
class _Scene:
    """The defect-free geometry and texture of one sample."""

    table_depth: np.ndarray
    x: np.ndarray
    y: np.ndarray
    height: np.ndarray
    albedo: np.ndarray
    normals: np.ndarray


def _scene(category: str, cfg: SynthConfig, rng: np.random.Generator) -> _Scene:
    rays = _rays(cfg)
    tilt = rng.uniform(-cfg.max_tilt, cfg.max_tilt, 2)
    normal = np.array([np.sin(tilt[0]), np.sin(tilt[1]), -1.0])
    distance = _TABLE_DISTANCE * rng.uniform(0.97, 1.03)
    depth = distance * normal[2] / (rays @ normal)
    tx, ty = rays[..., 0] * depth, rays[..., 1] * depth
    angle, scale = rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.008, 0.008, 2)
    cos, sin = np.cos(angle), np.sin(angle)
    x = (cos * (tx - shift[0]) + sin * (ty - shift[1])) / scale
    y = (-sin * (tx - shift[0]) + cos * (ty - shift[1])) / scale
    shape = SHAPES[category]
    height = shape.height(x, y, rng.uniform(0.9, 1.1)) * scale
    albedo = np.asarray(BACKGROUND_COLOR) * (1 + 0.08 * smooth_noise(tx, ty, rng, scale=0.02))[..., None]
    support = height > 0
    albedo[support] = shape.albedo(x[support], y[support], rng)
    normals = _normals(_rays(cfg) * (depth - height)[..., None])
    return _Scene(depth, x, y, height, albedo, normals)


def _backproject(depth: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    return _rays(cfg) * depth[..., None]


def render_sample(
    category: str, cfg: SynthConfig, index_seed: int, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample, deterministically in ``index_seed``.

    The same seed with and without ``defect`` gives the same object, pose and noise, so the
    two renders differ exactly inside the returned mask. With ``cfg.null_twins`` the defect is
    placed but not rendered: the mask is returned and the render is the defect-free one (with the
    footprint's points observed, as the defect's would be).

    Args:
        category: Key of ``SHAPES``.
        cfg: Image size and noise levels.
        index_seed: The sample's seed.
        defect: A defect type, or ``None`` for a good sample.

    Returns:
        ``rgb (H, W, 3)`` uint8, ``xyz (H, W, 3)`` float32 in metres (invalid = 0) and
        ``mask (H, W)`` bool.
    """
    scene = _scene(category, cfg, np.random.default_rng([index_seed, 0]))
    noise_rng = np.random.default_rng([index_seed, 1])
    found = None
    if defect is not None:
        pitch = _TABLE_DISTANCE / cfg.focal
        rng = np.random.default_rng([index_seed, 2])
        found = make_defect(defect, scene.x, scene.y, scene.height, rng, pixel_pitch=pitch)
    shown = None if cfg.null_twins else found
    observed = found.footprint if found is not None and found.changes_geometry else None
    rgb = _render_rgb(scene, shown, cfg, noise_rng)
    xyz = _render_xyz(scene, None if shown is None else shown.delta_height, observed, cfg, noise_rng)
    mask = np.zeros(cfg.image_size, dtype=bool) if found is None else found.footprint.copy()
    return rgb, xyz, mask


def _render_rgb(
    scene: _Scene, defect: Defect | None, cfg: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    shading = _shade(scene.normals)
    albedo = scene.albedo
    if defect is not None:
        foot = defect.footprint
        if defect.albedo_factor is not None:
            albedo = np.where(foot[..., None], albedo * defect.albedo_factor, albedo)
        weight = 1.0 if defect.shows_in_rgb else cfg.geometry_shading
        if defect.changes_geometry and weight > 0:  # shading changes only inside the footprint
            dented = _backproject(scene.table_depth - scene.height - defect.delta_height, cfg)
            deformed = _shade(_normals(dented))
            if weight < 1:
                deformed = shading + weight * (deformed - shading)
            shading = np.where(foot, deformed, shading)
    noise = rng.normal(0.0, cfg.rgb_noise, albedo.shape)
    return np.clip(np.rint(albedo * shading[..., None] * 255 + noise), 0, 255).astype(np.uint8)


def _render_xyz(
    scene: _Scene,
    delta_height: np.ndarray | None,
    observed: np.ndarray | None,
    cfg: SynthConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    height = scene.height if delta_height is None else scene.height + delta_height
    depth = scene.table_depth - height + rng.normal(0.0, cfg.depth_noise, height.shape)
    xyz = _backproject(depth, cfg).astype(np.float32)
    invalid = _invalid_points(scene, cfg, rng)
    if observed is not None:
        invalid &= ~observed  # a geometric defect's surface is always observed
    xyz[invalid] = 0.0
    return xyz


def _invalid_points(scene: _Scene, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Scanner dropouts from the defect-free geometry, so defects never move them."""
    h, w = cfg.image_size
    invalid = rng.random((h, w)) < cfg.dropout_rate
    side = max(1, round(0.02 * w))
    invalid[:, :side] = True
    invalid[:, w - side :] = True
    return invalid | (np.abs(scene.normals[..., 2]) < 0.25)


def sample_seed(cfg: SynthConfig, category: str, split: str, defect: str, index: int) -> int:
    """The seed of one sample, derived from the dataset seed and the sample's place."""
    keys = [cfg.seed, cfg.categories.index(category), ("train", "validation", "test").index(split)]
    keys += [(("good",) + DEFECT_TYPES).index(defect), index]
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def _plan(cfg: SynthConfig) -> list[tuple[str, str, str, int]]:
    """Every sample to write, as (category, split, defect, index)."""
    plan = []
    for cat in cfg.categories:
        groups = [
            ("train", "good", cfg.train),
            ("validation", "good", cfg.validation),
            ("test", "good", cfg.test_good),
        ]
        groups += [("test", d, cfg.test_per_defect) for d in cfg.defects]
        groups += [("validation", d, cfg.validation_per_defect) for d in cfg.defects]
        plan += [(cat, split, d, i) for split, d, n in groups for i in range(n)]
    return plan


def existing_categories(out: Path | str, cfg: SynthConfig) -> list[str]:
    """The categories of ``cfg`` that already have a folder under ``out`` (what generating would overwrite)."""
    return [c for c in cfg.categories if (Path(out) / c).exists()]


def generate_dataset(
    out: Path | str,
    cfg: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Write the synthetic dataset in the MVTec 3D-AD layout.

    Args:
        out: Dataset root to create.
        cfg: What to generate; defaults to ``SynthConfig()``.
        progress: Called as ``progress(done, total)`` after each sample.
        overwrite: Allow writing into existing category folders.

    Returns:
        A summary: root, seed, image size and per-category sample counts per split/defect.
    """
    cfg = cfg or SynthConfig()
    root = Path(out)
    clash = existing_categories(root, cfg)
    if clash and not overwrite:
        raise FileExistsError(f"{root}: category folders {clash} exist; pass overwrite=True to replace files")
    for cat in cfg.categories:
        _write_metadata(root / cat, cfg)
    _write_settings(root, cfg)
    plan = _plan(cfg)
    counts: dict[str, dict[str, int]] = {c: {} for c in cfg.categories}
    for done, (cat, split, defect, i) in enumerate(plan, start=1):
        _write_sample(
            root / cat / split / defect, f"{i:03d}", cat, cfg, sample_seed(cfg, cat, split, defect, i)
        )
        key = f"{split}/{defect}"
        counts[cat][key] = counts[cat].get(key, 0) + 1
        if progress is not None:
            progress(done, len(plan))
    logger.info("wrote %d synthetic samples to %s", len(plan), root)
    return {"root": str(root), "seed": cfg.seed, "image_size": list(cfg.image_size), "null_twins": cfg.null_twins,
            "geometry_shading": cfg.geometry_shading, "counts": counts}


def _write_sample(folder: Path, stem: str, category: str, cfg: SynthConfig, seed: int) -> None:
    defect = None if folder.name == "good" else folder.name
    rgb, xyz, mask = render_sample(category, cfg, seed, defect)
    write_rgb(folder / "rgb" / f"{stem}.png", rgb)
    write_xyz(folder / "xyz" / f"{stem}.tiff", xyz)
    if folder.parent.name == "test" or defect is not None:  # labelled validation parts have masks too
        grey = 0 if defect is None else 255 - cfg.defects.index(defect)
        write_mask(folder / "gt" / f"{stem}.png", mask.astype(np.uint8) * grey)


SETTINGS_FILE = "synth.json"
"""File at a generated dataset's root with the settings that made it (:func:`dataset_settings`)."""


def _write_settings(root: Path, cfg: SynthConfig) -> None:
    settings = {"generator": "cmdiad.synthetic", **dataclasses.asdict(cfg)}
    (root / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def dataset_settings(root: Path | str) -> dict | None:
    """The settings a dataset was generated with (its ``synth.json``), or None for other datasets
    and unreadable files."""
    try:
        settings = json.loads((Path(root) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) and settings.get("generator") == "cmdiad.synthetic" else None


def _write_metadata(cat_dir: Path, cfg: SynthConfig) -> None:
    ids = {"0": "good"} | {str(255 - i): d for i, d in enumerate(cfg.defects)}
    cat_dir.mkdir(parents=True, exist_ok=True)
    (cat_dir / "class_ids.json").write_text(json.dumps(ids, indent=2) + "\n")
    h, w = cfg.image_size
    camera = {"model": "pinhole", "fx": cfg.focal, "fy": cfg.focal, "cx": (w - 1) / 2, "cy": (h - 1) / 2}
    camera |= {"image_width": w, "image_height": h, "units": "m"}
    (cat_dir / "calibration").mkdir(exist_ok=True)
    (cat_dir / "calibration" / "camera_parameters.json").write_text(json.dumps(camera, indent=2) + "\n")
