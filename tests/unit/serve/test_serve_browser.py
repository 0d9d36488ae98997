"""A real browser (headless chromium, when installed) renders the status page of a live server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from cmdiad.pipeline.routing import Router
from cmdiad.serve.app import ServeConfig, create_app

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(serve_router: Router):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: serve_router, ServeConfig()), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed")
def test_status_page_in_a_real_browser(live_server: str, part_files, tmp_path: Path) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        assert client.get("/health").status_code == 200
        body = client.post("/score", files={"rgb": ("part.png", part_files["rgb"].read_bytes())}).json()
    dom = _chromium("--dump-dom", f"{live_server}/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'id="part-{body["id"]}"' in dom.stdout
    assert f'<img src="/heatmaps/{body["id"]}.png"' in dom.stdout
    assert body["decision"] in dom.stdout
    shot = tmp_path / "status.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=900,700", f"{live_server}/")
    assert run.returncode == 0 and shot.is_file() and shot.stat().st_size > 1000, run.stderr[-2000:]
