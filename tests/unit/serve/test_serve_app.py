"""The scoring service in-process: health, scoring, heatmaps, status page and every refusal."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cmdiad.pipeline.routing import Router
from cmdiad.serve.app import ServeConfig, create_app
from cmdiad.types import SampleRecord


@pytest.fixture
def client(serve_router: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(lambda: serve_router, ServeConfig(max_upload_bytes=2**20, keep_parts=2), name="tiny")
    with TestClient(app) as c:
        yield c


def _files(**kw: Path | bytes) -> dict[str, tuple[str, bytes]]:
    return {k: (v.name if isinstance(v, Path) else f"{k}.bin", v.read_bytes() if isinstance(v, Path) else v)
            for k, v in kw.items()}


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["routes"] == ["both", "rgb"]


def test_score_rgb_matches_the_router_and_serves_its_heatmap(client, serve_router, part_files) -> None:
    r = client.post("/score", files=_files(rgb=part_files["rgb"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "rgb" and body["decision"] in ("PASS", "FAIL")
    rec = SampleRecord(category="x", split="predict", defect="unknown", stem="p", rgb_path=part_files["rgb"])
    expected = float(serve_router.score([rec])[0][1].image_score[0])
    assert body["score"] == pytest.approx(expected, rel=1e-5)
    assert body["threshold"] == serve_router.detectors["rgb"].threshold
    assert body["decision"] == ("FAIL" if expected > body["threshold"] else "PASS")
    assert body["timing_ms"]["total"] >= body["timing_ms"]["score"] > 0
    png = client.get(body["heatmap_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    width, height = Image.open(io.BytesIO(png.content)).size  # the 64x64 map enlarged, with the verdict strip
    assert width >= 256 and height > 256
    page = client.get("/")
    assert page.status_code == 200 and f'src="/heatmaps/{body["id"]}.png"' in page.text


def test_score_both_uses_the_dual_route(client, part_files) -> None:
    r = client.post("/score", files=_files(rgb=part_files["rgb"], xyz=part_files["xyz"]))
    assert r.status_code == 200, r.text
    assert r.json()["route"] == "both"


def test_xyz_only_part_without_a_route_is_refused(client, part_files) -> None:
    r = client.post("/score", files=_files(xyz=part_files["xyz"]))
    assert r.status_code == 422 and "no detector" in r.json()["error"]


def test_heatmaps_are_an_lru_of_the_last_parts(client, part_files) -> None:
    ids = [client.post("/score", files=_files(rgb=part_files["rgb"])).json()["id"] for _ in range(3)]
    assert client.get(f"/heatmaps/{ids[0]}.png").status_code == 404  # keep_parts=2
    assert all(client.get(f"/heatmaps/{i}.png").status_code == 200 for i in ids[1:])
    assert "only the last 2" in client.get("/heatmaps/nope.png").json()["error"]


@pytest.mark.parametrize(("make", "status", "reason"), [
    (lambda f: _files(rgb=b"this is not an image"), 422, "rgb upload"),
    (lambda f: _files(rgb=f["rgb"], xyz=f["xyz"].read_bytes()[:3000]), 422, "xyz upload"),
    (lambda f: _files(rgb=_png(32, 48), xyz=f["xyz"]), 422, "differs from xyz size"),
    (lambda f: _files(rgb=_png(4, 4)), 422, "smallest accepted side"),
    (lambda f: _files(rgb=b""), 400, "empty"),
    (lambda f: _files(other=b"x"), 400, "unknown field"),
    (lambda f: _files(rgb=b"\x89PNG" + bytes(2**20 + 10)), 413, "larger than the limit"),
])
def test_bad_uploads_get_a_4xx_with_the_reason(client, part_files, make, status, reason) -> None:
    r = client.post("/score", files=make(part_files))
    assert r.status_code == status, r.text
    assert reason in r.json()["error"] and "Traceback" not in r.text and "cmdiad-serve-" not in r.text


def test_missing_fields_and_non_multipart(client) -> None:
    r = client.post("/score", data={"rgb": "a text value"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    r = client.post("/score", files={"rgb": (None, b"text")})  # a form field that is not a file
    assert r.status_code == 400 and "file upload" in r.json()["error"]


def test_busy_service_answers_503(client, part_files) -> None:
    svc = client.app.app.state.service
    taken = [svc.slots.acquire(blocking=False) for _ in range(svc.cfg.max_pending)]
    try:
        r = client.post("/score", files=_files(rgb=part_files["rgb"]))
        assert r.status_code == 503 and "busy" in r.json()["error"]
    finally:
        for _ in taken:
            svc.slots.release()
    assert client.post("/score", files=_files(rgb=part_files["rgb"])).status_code == 200


def test_uploads_are_written_to_a_temp_dir_that_is_removed(client, part_files, tmp_path: Path) -> None:
    assert client.post("/score", files=_files(rgb=part_files["rgb"])).status_code == 200
    assert client.post("/score", files=_files(rgb=b"junk")).status_code == 422
    assert not list(tmp_path.glob("cmdiad-serve-*"))


def test_unexpected_failure_is_a_500_json_without_traceback(serve_router, part_files, monkeypatch) -> None:
    def boom(records, **kw):
        raise RuntimeError("secret internals")

    router = Router(dict(serve_router.detectors))
    monkeypatch.setattr(router, "score", boom)
    with TestClient(create_app(lambda: router), raise_server_exceptions=False) as c:
        r = c.post("/score", files=_files(rgb=part_files["rgb"]))
    assert r.status_code == 500 and "RuntimeError" in r.json()["error"] and "secret" not in r.text


def test_streamed_body_over_the_limit_is_a_413(client, part_files) -> None:
    boundary = "cmdiadtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"rgb\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + bytes(2**20 + 10) + f"\r\n--{boundary}--\r\n".encode()

    def chunks():  # no Content-Length: the size is only known while streaming
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = client.post("/score", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]


def test_no_feature_cache_keeps_nothing() -> None:
    import torch

    from cmdiad.serve.worker import NoFeatureCache
    from cmdiad.types import PatchFeatures

    cache = NoFeatureCache()
    pf = PatchFeatures(torch.ones(1, 2, 3, 3), torch.ones(1, 3, 3, dtype=torch.bool))
    back = cache.put("e", "s", pf)
    assert torch.equal(back.features, pf.features) and cache.get("e", "s") is None and not cache._memory


def test_cli_serve_refuses_a_bad_model_before_binding(tmp_path: Path, capsys) -> None:
    from cmdiad.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--port", "1"]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    assert main(["serve", str(bad), "--port", "1"]) == 2
    assert "bad.onnx" in capsys.readouterr().err
    assert main(["serve", str(bad), "--port", "1", "--batch", "0"]) == 2  # refused before the model is read
    err = capsys.readouterr().err
    assert "max_batch" in err and "bad.onnx" not in err
