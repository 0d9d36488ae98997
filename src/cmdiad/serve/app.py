"""The FastAPI scoring service: health, scoring of uploaded parts, heatmaps and a status page.

- ``GET /health``: 200 once the model is loaded (503 while loading);
- ``POST /score``: multipart fields ``rgb`` (PNG/JPEG) and/or ``xyz`` (organized TIFF), the
  files ``cmdiad predict`` reads, routed like predict through the model's Router;
- ``GET /heatmaps/<id>.png``: the heatmap of one of the last parts (a bounded LRU);
- ``GET /``: the status page.

Bad uploads get a 4xx JSON ``{"error": reason, "status": code}``; unexpected failures a 500 JSON
without traceback (logged). Bodies are bounded (:class:`~cmdiad.serve.limits.BodyLimit`) and so
is the number of requests in flight (503 when full). Scoring runs in one thread, which can score
queued parts in micro-batches (:mod:`cmdiad.serve.batcher`, ``max_batch``), one forward pass per
batch; heatmap PNGs are encoded when first fetched, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from cmdiad import __version__
from cmdiad.errors import CmdiadError
from cmdiad.serve.batcher import Batcher
from cmdiad.serve.limits import BodyLimit
from cmdiad.serve.page import status_page
from cmdiad.serve.store import PartStore
from cmdiad.serve.worker import UploadError, forget_inputs, score_batch

log = logging.getLogger(__name__)

FIELDS = ("rgb", "xyz")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and resources of the service."""

    max_upload_bytes: int = 64 * 2**20
    """Largest request body accepted (413 above)."""
    max_pending: int = 8
    """Requests scored or waiting at once (503 above)."""
    keep_parts: int = 50
    """Last parts kept with their heatmaps (LRU)."""
    torch_threads: int | None = None
    """torch intra-op threads, set once in the scoring thread; None keeps torch's default."""
    max_batch: int = 1
    """Most queued parts scored in one forward pass (1: one at a time). On a 2-core CPU a batch of 4
    EfficientNet-Lite0 parts cost as much per part as 4 single passes (PyTorch and ONNX), and each part
    of a batch waits for the whole batch, so batching is off by default; it may pay on wider machines."""
    batch_wait_ms: float = 2.0
    """Longest wait for a batch to fill once a part is queued (0: only what is already queued)."""

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_pending, self.keep_parts, self.max_batch) < 1:
            raise ValueError("max_upload_bytes, max_pending, keep_parts and max_batch must be >= 1")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


class Service:
    """State shared by the routes: the model, the store, the scoring thread and the request slots."""

    def __init__(self, loader: Callable[[], Any], cfg: ServeConfig, name: str) -> None:
        self.loader, self.cfg, self.name = loader, cfg, name
        self.model: Any = None
        self.store = PartStore(cfg.keep_parts)
        self.slots = threading.BoundedSemaphore(cfg.max_pending)
        self.batcher: Batcher | None = None
        self.counts = {"scored": 0, "rejected": 0, "busy": 0}

    async def start(self) -> None:
        """Start the scoring thread and load the model in it."""
        cfg = self.cfg
        self.batcher = Batcher(lambda jobs: score_batch(self.model, jobs), max_batch=cfg.max_batch,
                               max_wait_s=cfg.batch_wait_ms / 1000, init=lambda: _set_threads(cfg.torch_threads))
        model = await asyncio.wrap_future(self.batcher.call(self.loader))
        forget_inputs(model)
        self.model = model

    def stop(self) -> None:
        """End the scoring thread once the queued parts are scored."""
        if self.batcher is not None:
            self.batcher.stop()

    def info(self) -> dict[str, Any]:
        routes = sorted(self.model.detectors) if self.model is not None else []
        b = self.batcher
        mean_batch = f"{b.jobs / b.batches:.2f}" if b is not None and b.batches else "-"
        return {"model": self.name, "routes": ", ".join(routes), "cmdiad": __version__,
                **{f"parts {k}": v for k, v in self.counts.items()}, "parts kept": len(self.store),
                "mean batch": mean_batch}

    async def score(self, request: Request) -> JSONResponse:
        if self.model is None:
            return _error(503, "the model is still loading")
        if not self.slots.acquire(blocking=False):
            self.counts["busy"] += 1
            return _error(503, f"busy: {self.cfg.max_pending} requests are already in flight; retry later")
        try:
            return await self._score(request)
        except UploadError as exc:
            self.counts["rejected"] += 1
            return _error(exc.status, exc.message)
        finally:
            self.slots.release()

    async def _score(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise UploadError(415, f"send multipart/form-data with fields {' and/or '.join(FIELDS)} "
                                   f"(got content-type {ctype or 'none'!r})")
        form = await request.form(max_files=len(FIELDS), max_fields=len(FIELDS) + 2)
        with tempfile.TemporaryDirectory(prefix="cmdiad-serve-") as tmp:
            try:
                files = await _save_uploads(form, Path(tmp))
            finally:
                await form.close()
            t1 = time.perf_counter()
            part = await asyncio.wrap_future(self.batcher.submit(files, uuid.uuid4().hex[:12]))
        timing = part.result["timing_ms"]
        timing["parse"], timing["total"] = 1000 * (t1 - t0), 1000 * (time.perf_counter() - t0)
        self.store.add(part)
        self.counts["scored"] += 1
        return JSONResponse(part.result)


async def _save_uploads(form, folder: Path) -> dict[str, tuple[Path, str]]:
    """Write the ``rgb``/``xyz`` uploads to ``folder``: ``{field: (path, client filename)}``."""
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise UploadError(400, f"unknown field(s) {', '.join(unknown)}; send {' and/or '.join(FIELDS)}")
    out = {}
    for name, suffix in (("rgb", ".png"), ("xyz", ".tiff")):
        value = form.get(name)
        if value is None:
            continue
        if isinstance(value, str) or not hasattr(value, "read"):
            raise UploadError(400, f"field {name!r} must be a file upload, not a text value")
        data = await value.read()
        if not data:
            raise UploadError(400, f"field {name!r}: the uploaded file is empty")
        path = folder / f"part{suffix}"
        path.write_bytes(data)
        out[name] = (path, value.filename or "")
    if not out:
        raise UploadError(400, f"no file: send a multipart field {' and/or '.join(repr(f) for f in FIELDS)}")
    return out


def create_app(loader: Callable[[], Any], cfg: ServeConfig | None = None, *, name: str = "model") -> Any:
    """The ASGI app (FastAPI wrapped in the body-size guard).

    Args:
        loader: Returns the model (a Router, e.g. from
            :func:`~cmdiad.pipeline.onnx_model.load_model`); called once at start-up.
        cfg: Limits; defaults when None.
        name: Model name shown by ``/health`` and the status page.
    """
    cfg = cfg or ServeConfig()
    svc = Service(loader, cfg, name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await svc.start()
        log.info("model %s loaded (routes %s)", name, sorted(svc.model.detectors))
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="cmdiad", version=__version__, lifespan=lifespan)
    app.state.service = svc
    _routes(app, svc)
    _handlers(app)
    return BodyLimit(app, cfg.max_upload_bytes)


def _routes(app: FastAPI, svc: Service) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if svc.model is None:
            return _error(503, "loading")
        return JSONResponse({"status": "ok", "model": svc.name, "routes": sorted(svc.model.detectors),
                             "version": __version__})

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        return await svc.score(request)

    @app.get("/heatmaps/{name}")
    async def heatmap(name: str) -> Response:
        part = svc.store.get(name.removesuffix(".png")) if name.endswith(".png") else None
        if part is None:
            return _error(404, f"no heatmap {name!r} (only the last {svc.cfg.keep_parts} parts are kept)")
        png = await asyncio.to_thread(lambda: part.png)  # encoded on the first fetch, off the event loop
        return Response(png, media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(status_page(svc.info(), svc.store.latest()))


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, f"invalid request: {exc.errors()}")

    @app.exception_handler(CmdiadError)
    async def cmdiad_error(request: Request, exc: CmdiadError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")
