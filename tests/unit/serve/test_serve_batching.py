"""Micro-batching of queued parts, the scoring thread, and lazily encoded heatmaps."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cmdiad.io.mvtec3d import list_records
from cmdiad.pipeline.routing import Router
from cmdiad.serve.app import ServeConfig, create_app
from cmdiad.serve.batcher import Batcher, Job
from cmdiad.serve.worker import UploadError, forget_inputs, score_batch


def _job(tmp: Path, i: int, **paths: Path) -> Job:
    """A job whose uploads are copies of ``paths`` (as the service writes them)."""
    files = {}
    for field, src in paths.items():
        dst = tmp / f"{i}-{field}{src.suffix}"
        shutil.copyfile(src, dst)
        files[field] = (dst, src.name)
    return Job(files, f"p{i}")


def test_micro_batched_results_equal_single_results(serve_router: Router, serve_data: Path, tmp_path: Path) -> None:
    tests = list_records(serve_data, "ring", "test")
    jobs = [_job(tmp_path, i, rgb=r.rgb_path) for i, r in enumerate(tests)]
    jobs.insert(1, _job(tmp_path, 99, rgb=tests[0].xyz_path))  # a bad part in the middle of the batch
    jobs.append(_job(tmp_path, 98, rgb=tests[0].rgb_path, xyz=tests[0].xyz_path))  # another route
    batched = score_batch(serve_router, jobs)
    assert isinstance(batched[1], UploadError) and batched[1].status == 422 and "rgb upload" in batched[1].message
    assert [p.result["route"] for p in batched if not isinstance(p, UploadError)] == ["rgb"] * len(tests) + ["both"]
    assert batched[0].result["timing_ms"]["batch"] == len(jobs) - 1
    for job, part in zip(jobs, batched, strict=True):
        if isinstance(part, UploadError):
            continue
        alone = score_batch(serve_router, [job])[0]
        assert alone.result["timing_ms"]["batch"] == 1
        assert part.result["score"] == pytest.approx(alone.result["score"], abs=1e-6)
        np.testing.assert_allclose(part.amap.astype(np.float32), alone.amap.astype(np.float32), atol=1e-6)
        assert part.result["decision"] == alone.result["decision"]


def _recording_batcher(**kw) -> tuple[Batcher, list[list[str]]]:
    sizes: list[list[str]] = []

    def fake(jobs: list[Job]) -> list:
        sizes.append([j.part_id for j in jobs])
        return [ValueError(j.part_id) if j.part_id == "bad" else j.part_id.upper() for j in jobs]

    return Batcher(fake, **kw), sizes


def test_parts_queued_while_a_batch_is_scored_form_the_next_batch() -> None:
    batcher, batches = _recording_batcher(max_batch=4, max_wait_s=0.0)
    gate = threading.Event()
    busy = batcher.call(gate.wait)  # holds the scoring thread
    futures = [batcher.submit({}, name) for name in ("a", "b", "bad", "c", "d")]
    gate.set()
    assert busy.result(timeout=10) is True
    assert [f.result(timeout=10) for f in futures[:2] + futures[3:]] == ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="bad"):
        futures[2].result(timeout=10)
    assert batches == [["a", "b", "bad", "c"], ["d"]]  # in order, at most max_batch at once
    batcher.stop()
    assert batcher.batches == 2 and batcher.jobs == 5


def test_a_lone_part_waits_at_most_the_batch_wait() -> None:
    batcher, batches = _recording_batcher(max_batch=8, max_wait_s=0.05)
    first = batcher.submit({}, "a")
    assert first.result(timeout=10) == "A"
    assert batcher.submit({}, "b").result(timeout=10) == "B"
    batcher.stop()
    assert batches == [["a"], ["b"]]


def test_a_failing_batch_fails_each_of_its_requests() -> None:
    def broken(jobs):
        raise RuntimeError("broken model")

    batcher = Batcher(broken, max_batch=2, max_wait_s=0.0)
    futures = [batcher.submit({}, "a"), batcher.submit({}, "b")]
    for f in futures:
        with pytest.raises(RuntimeError, match="broken model"):
            f.result(timeout=10)
    batcher.stop()


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"batch_wait_ms": -1.0}])
def test_batching_limits_are_validated(kw) -> None:
    with pytest.raises(ValueError):
        ServeConfig(**kw)
    with pytest.raises(ValueError):
        Batcher(lambda jobs: jobs, max_batch=kw.get("max_batch", 1), max_wait_s=kw.get("batch_wait_ms", 0.0))


def test_heatmap_is_encoded_when_its_url_is_first_fetched(serve_router: Router, part_files) -> None:
    app = create_app(lambda: serve_router, ServeConfig(max_batch=2, batch_wait_ms=1.0), name="tiny")
    with TestClient(app) as client:
        body = client.post("/score", files={"rgb": ("p.png", part_files["rgb"].read_bytes())}).json()
        timing = body["timing_ms"]
        assert timing["total"] >= timing["parse"] + timing["queue"] and timing["batch"] == 1
        part = client.app.app.state.service.store.get(body["id"])
        assert part._png is None  # nothing encoded while the client waited for its score
        first = client.get(body["heatmap_url"])
        assert first.status_code == 200 and first.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert part._png == first.content and client.get(body["heatmap_url"]).content == first.content
        assert "mean batch" in client.get("/").text


def test_the_service_keeps_no_input_of_past_uploads(serve_router: Router) -> None:
    router = Router(dict(serve_router.detectors))
    encoders = [d.encoder for d in router.detectors.values()]
    for e in encoders:
        e.keep_inputs = True
    with TestClient(create_app(lambda: router)):  # the service drops the encoders' store of inputs at start
        assert encoders and not any(e.keep_inputs for e in encoders)
    forget_inputs(Router({}))  # no detector (or none with an encoder, as for ONNX): nothing to do
