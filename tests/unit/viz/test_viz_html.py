"""The self-contained report.html and the raw npz reader."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from cmdiad.errors import DatasetError
from cmdiad.viz.heatmaps import depth_render
from cmdiad.viz.html import background_image, load_raw, select_samples, write_html_report

CATEGORIES = ("bagel", "cable_gland")


def _records() -> list[dict]:
    rows = [("xyz", "xyz"), ("f2f", "rgb")]
    return [
        {"method": m, "main": main, "category": c, "i_auroc": 0.9, "p_auroc": 0.95, "aupro_30": 0.8,
         "aupro_1": 0.3, "fit_seconds": 1.5, "ms_per_sample": 12.0}
        for m, main in rows for c in CATEGORIES
    ]


def _write_raw(path, rng, data_dir, n: int = 8, size: int = 24) -> None:
    """n samples: even ones have an RGB png, odd ones only an xyz tiff, the last has neither."""
    rgb_files, xyz_files = [], []
    for i in range(n):
        rgb = xyz = ""
        if i == n - 1:
            pass
        elif i % 2 == 0:
            rgb = str(data_dir / f"{path.stem}_{i}.png")
            Image.fromarray(rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)).save(rgb)
        else:
            xyz = str(data_dir / f"{path.stem}_{i}.tiff")
            tifffile.imwrite(xyz, rng.random((size, size, 3)).astype(np.float32) + 1.0)
        rgb_files.append(rgb)
        xyz_files.append(xyz)
    masks = np.zeros((n, size, size), bool)
    masks[: n // 2, 5:12, 5:12] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path, image_scores=rng.random(n), labels=(np.arange(n) < n // 2).astype(int),
        anomaly_maps=rng.random((n, size, size)).astype(np.float16), gt_masks=masks,
        paths=np.array([f"{path.stem}/test/x/{i:03d}" for i in range(n)]),
        rgb_files=np.array(rgb_files), xyz_files=np.array(xyz_files),
    )


@pytest.fixture
def report(tmp_path, rng) -> str:
    raw = tmp_path / "raw"
    data = tmp_path / "data"
    data.mkdir()
    for row in ("xyz", "f2f_rgb"):
        for c in CATEGORIES:
            _write_raw(raw / row / f"{c}.npz", rng, data)
    path = write_html_report(tmp_path / "out", _records(), raw, top_k=2, title="T <1>", command="cmdiad x")
    return path.read_text(encoding="utf-8")


def test_report_has_every_table_and_no_external_link(report) -> None:
    for heading in ("I-AUROC", "P-AUROC", "AUPRO@30%", "AUPRO@1%"):
        assert f"<h2>{heading}</h2><table>" in report
    assert "<h2>Timing</h2><p>Machine-dependent" in report
    assert report.count("<th>Cable_Gland</th>") == 5  # four metrics and the test-sample counts
    assert "Single xyz bank" in report and "MTFI F2F (RGB main)" in report
    assert "T &lt;1&gt;" in report and "cmdiad x" in report
    assert "http" not in report and "<script" not in report and "src=\"/" not in report


def test_report_embeds_png_thumbnails(report) -> None:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)" alt="(?:image|anomaly map)"', report)
    # 2 rows x 2 categories x (2 top + 2 bottom) samples x (image + overlay)
    assert len(uris) == 2 * 2 * 4 * 2
    assert report.count('alt="colour bar"') == 2 * 2
    sizes = {Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris}
    assert max(max(s) for s in sizes) <= 192
    assert len(report) < 1_000_000


def test_missing_raw_file_is_reported_not_fatal(tmp_path) -> None:
    text = write_html_report(tmp_path, _records()[:1], tmp_path / "nowhere").read_text()
    assert "no raw results" in text and "data:image/png" not in text


def test_unreadable_image_falls_back_to_grey(tmp_path, rng) -> None:
    raw = tmp_path / "raw" / "xyz" / "bagel.npz"
    raw.parent.mkdir(parents=True)
    np.savez(
        raw, image_scores=np.array([0.2]), labels=np.array([1]), anomaly_maps=np.zeros((1, 8, 8)),
        gt_masks=np.zeros((1, 8, 8), bool), paths=np.array(["bagel/test/x/000"]),
        rgb_files=np.array([str(tmp_path / "gone.png")]), xyz_files=np.array([""]),
    )
    text = write_html_report(tmp_path, _records()[:1], tmp_path / "raw", top_k=1).read_text()
    first = re.search(r'src="data:image/png;base64,([^"]+)" alt="image"', text).group(1)
    assert (np.asarray(Image.open(io.BytesIO(base64.b64decode(first))).convert("RGB")) == 128).all()


def test_select_samples_top_and_bottom_without_repeats() -> None:
    assert select_samples(np.array([0.5, 0.9, 0.1, 0.7, 0.3]), 2) == [1, 3, 2, 4]
    assert sorted(select_samples(np.array([0.2, 0.1]), 3)) == [0, 1]


def test_load_raw_rejects_missing_keys_and_length_mismatch(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, image_scores=np.zeros(2))
    with pytest.raises(DatasetError, match="missing arrays"):
        load_raw(bad)
    np.savez(
        bad, image_scores=np.zeros(2), labels=np.zeros(3), anomaly_maps=np.zeros((2, 4, 4)),
        gt_masks=np.zeros((2, 4, 4), bool), paths=np.array(["a", "b"]),
    )
    with pytest.raises(DatasetError, match="disagree"):
        load_raw(bad)
    loaded_ok = tmp_path / "ok.npz"
    np.savez(
        loaded_ok, image_scores=np.zeros(2), labels=np.zeros(2), anomaly_maps=np.zeros((2, 4, 4)),
        gt_masks=np.zeros((2, 4, 4), bool), paths=np.array(["a", "b"]),
    )
    assert list(load_raw(loaded_ok).rgb_files) == ["", ""]


def test_background_image_reads_rgb_then_xyz_then_grey(tmp_path, rng) -> None:
    path = tmp_path / "raw.npz"
    _write_raw(path, rng, tmp_path, n=3, size=10)
    raw = load_raw(path)
    rgb = background_image(raw, 0, (10, 10))  # png at 20x20, resized
    expected = np.asarray(Image.open(raw.rgb_files[0]).resize((10, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(rgb, expected)
    xyz = background_image(raw, 1, (10, 10))
    np.testing.assert_array_equal(xyz, depth_render(tifffile.imread(raw.xyz_files[1])))
    assert (background_image(raw, 2, (4, 6)) == 128).all()


def test_report_shows_run_metadata_plots_colour_bar_and_per_defect_tables(tmp_path, rng) -> None:
    raw = tmp_path / "raw"
    _write_raw(raw / "xyz" / "bagel.npz", rng, tmp_path)
    records = [{**_records()[0], "num_test": 8, "per_defect": {
        "crack": {"num_test": 4, "i_auroc": 0.75, "p_auroc": 0.5, "aupro_30": 0.25, "aupro_1": 0.125}}}]
    info = {"dataset": "/data/mvtec <3d>", "preset": "paper", "seed": 7, "cmdiad_version": "0.1.0",
            "torch": "2.x", "cpu": "x86_64", "samples": {"bagel": {"train": 10, "validation": 2, "test": 8}}}
    text = write_html_report(tmp_path, records, raw, run_info=info).read_text()
    assert "/data/mvtec &lt;3d&gt;" in text and "<td>paper</td>" in text and "<td>x86_64</td>" in text
    assert "<th>validation</th>" in text and "<td>10</td>" in text
    assert text.count("<svg") == 2  # the row's ROC and the category's score histogram
    assert 'alt="colour bar"' in text
    assert "<h3>I-AUROC per defect type</h3>" in text and "<td>0.750</td>" in text
    assert text.index("<h2>Timing</h2>") > text.index("<h3>AUPRO@1% per defect type</h3>")
    detail = text[text.index("<h3>bagel</h3>"):]  # the row's own per-category, per-type table
    assert "<th>Defect type</th>" in detail and "<td>crack</td><td>4</td><td>0.750</td>" in detail


def test_report_shows_the_pixel_fusion_chosen_on_labelled_parts(tmp_path) -> None:
    records = _records()
    assert "Pixel fusion chosen" not in write_html_report(tmp_path, records, tmp_path / "raw").read_text()
    records[2]["pixel_fusion"] = {  # f2f rgb, bagel
        "chosen": "main sensor only", "label_free": "maximum, offset 0.5", "labelled_parts": 5,
        "p_auroc": {"main sensor only": {"bump": 0.9, "stain": 0.8},
                    "maximum, offset 0.5": {"bump": 0.7, "stain": 0.8}}}
    info = {"samples": {"bagel": {"train": 10, "validation": 2, "validation_labelled": 5, "test": 8}}}
    text = write_html_report(tmp_path, records, tmp_path / "raw", run_info=info).read_text()
    section = text[text.index("<h2>Pixel fusion chosen on labelled parts</h2>"):text.index("<h2>Timing</h2>")]
    assert "<td>main sensor only</td><td>maximum, offset 0.5</td><td>5</td><td>0.850</td><td>0.750</td>" in section
    assert "<th>P-AUROC: main sensor only</th>" in section and "<td>bagel</td>" in section
    assert "<th>validation_labelled</th>" in text and "<td>5</td>" in text


def test_the_pixel_fusion_table_takes_every_setting_any_row_tried(tmp_path) -> None:
    """A user's own label-free setting is a candidate only for rows where it was the label-free one."""
    records = _records()
    usual = {"main sensor only": {"bump": 0.9}, "maximum, offset 0": {"bump": 0.8}}
    records[2]["pixel_fusion"] = {"chosen": "maximum, offset 0", "label_free": "maximum, offset 0",
                                  "labelled_parts": 1, "p_auroc": usual}
    records[3]["pixel_fusion"] = {"chosen": "maximum, offset 0.3", "label_free": "maximum, offset 0.3",
                                  "labelled_parts": 1, "p_auroc": usual | {"maximum, offset 0.3": {"bump": 0.95}}}
    text = write_html_report(tmp_path, records, tmp_path / "raw").read_text()
    section = text[text.index("<h2>Pixel fusion chosen on labelled parts</h2>"):text.index("<h2>Timing</h2>")]
    assert "<th>P-AUROC: maximum, offset 0.3</th>" in section
    assert "<td>0.900</td><td>0.800</td><td>n/a</td>" in section  # the row that did not try it
    assert "<td>0.900</td><td>0.800</td><td>0.950</td>" in section
