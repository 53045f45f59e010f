"""HTTP service around Predictor: FastAPI app + uvicorn. Imports nothing from engine/.

Endpoints: POST /predict (one image: multipart field `file`, or the raw image as the request body),
POST /predict/batch (multipart, one or more `files` fields), GET /healthz, GET /info, and the OpenAPI
schema at /openapi.json (browsable at /docs).

Batching policy: requests are decoded and preprocessed in parallel threads, then queued for one model
thread. Whenever that thread is free it takes everything queued, up to --max-batch images, and runs them as
one batch; with --batch-wait-ms W > 0 it first waits up to W ms for more to arrive. So an idle server answers
a lone request at batch size 1 with no added delay, and under concurrent load batches grow by themselves
(each model call amortises its fixed cost over more images), without a timer adding latency by default.

Limits, each a JSON error `{"detail": "..."}`: body over --max-body-mb -> 413; not an image or an unsupported
format -> 415; decodable but more pixels than --max-pixels (decompression bomb) -> 422; no image sent -> 400;
bad query parameters -> 422.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import torch
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .data.decode import DecodeError, decode_image
from .errors import UserError
from .predict import Predictor

SETTINGS_ENV = "RESNETCLS_SERVE_SETTINGS"  # how --workers N hands the settings to each worker process
MAX_BATCH_FILES = 64


@dataclass
class ServeSettings:
    model: str
    backend: str = "torch"
    max_body_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_batch: int = 32
    batch_wait_ms: float = 0.0
    precision: str = "auto"         # predict's --precision: auto (bf16 where native) | bf16 | fp32


class ClassProb(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    prob: float = Field(description="softmax probability")


class PredictResponse(BaseModel):
    filename: str = Field(description="the uploaded file's name, or 'body' for a raw request body")
    top: list[ClassProb] = Field(description="the top-k classes, most probable first")


class BatchItem(BaseModel):
    filename: str
    status: int = Field(description="200, or the status this file alone would have got (415, 422)")
    top: list[ClassProb] | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one entry per uploaded file, in order")


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str
    queued: int = Field(description="images waiting for the model thread")
    batches_run: int = Field(description="model calls so far")
    images_run: int = Field(description="images classified so far (images_run / batches_run = mean batch)")


class InfoResponse(BaseModel):
    format: str
    arch: str
    arch_args: dict
    classes: list[str]
    preprocess: dict
    metrics: dict
    created: str | None
    backend: str
    precision: str = Field(description="what the model runs in: bf16 or fp32 (see --precision)")
    limits: dict
    batching: dict


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorResponse} for code in codes}


BINARY = {"type": "string", "format": "binary"}
ONE_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": BINARY}, "required": ["file"]}},
    "image/*": {"schema": BINARY}, "application/octet-stream": {"schema": BINARY}}}}
BATCH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": {"type": "array", "items": BINARY, "maxItems": MAX_BATCH_FILES}},
    "required": ["files"]}}}}}


class Batcher:
    """Cross-request batching (policy in the module docstring): one model thread, a queue in front of it."""

    def __init__(self, run_batch, max_batch: int, wait_ms: float) -> None:
        self.run_batch, self.max_batch, self.wait_s = run_batch, max(1, max_batch), max(0.0, wait_ms) / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.batches_run = self.images_run = 0  # their ratio is the mean batch size actually achieved

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, tensor: torch.Tensor) -> torch.Tensor:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((tensor, future))
        return await future

    async def _collect(self) -> list:
        items = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [(t, f) for t, f in items if not f.done()]  # callers that hung up need no answer
            if not live:
                continue
            try:
                probs = await loop.run_in_executor(self.executor, self.run_batch, torch.stack([t for t, _ in live]))
            except Exception as e:  # noqa: BLE001 - every waiting caller must get an answer, never hang
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches_run += 1
            self.images_run += len(live)
            for row, (_, future) in zip(probs, live):
                if not future.done():
                    future.set_result(row)


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit with 413, by Content-Length or while they stream in."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body is larger than the limit of {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large().detail}, 413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # handled by the app's exception handler as a JSON 413
            return message

        await self.app(scope, limited_receive, send)


class ImageService:
    """Request bytes -> preprocessed tensor with the status-code contract, and tensor -> top-k via the Batcher."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.predictor = Predictor(settings.model, backend=settings.backend, precision=settings.precision)
        self.batcher = Batcher(self.predictor.probabilities, settings.max_batch, settings.batch_wait_ms)

    def prepare(self, data: bytes, name: str) -> torch.Tensor:
        """Decode and preprocess; 415 for what is not a usable image, 422 for too many pixels."""
        if not data:
            raise HTTPException(400, f"{name}: empty file")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only: the size before decoding
                width, height = probe.size
        except Image.DecompressionBombError as e:
            raise HTTPException(422, f"{name}: {e}") from None
        except Exception:  # noqa: BLE001 - Pillow raises many types for non-images
            raise HTTPException(415, f"{name}: not an image in a format we read (JPEG, PNG, GIF, BMP, WebP, "
                                     f"TIFF, PPM)") from None
        if width * height > self.settings.max_pixels:
            raise HTTPException(422, f"{name}: image is {width}x{height} = {width * height} pixels, above the "
                                     f"limit of {self.settings.max_pixels} (possible decompression bomb)")
        try:
            image = decode_image(data, name=name, max_pixels=self.settings.max_pixels)
        except DecodeError as e:
            raise HTTPException(415, str(e)) from None
        return self.predictor.transform(image)

    async def top(self, data: bytes, name: str, topk: int) -> list[ClassProb]:
        tensor = await run_in_threadpool(self.prepare, data, name)
        probs = await self.batcher.submit(tensor)
        values, indices = probs.topk(min(topk, len(self.predictor.classes)))
        return [ClassProb(class_=self.predictor.classes[i], prob=round(v, 6))
                for v, i in zip(values.tolist(), indices.tolist())]

    def info(self) -> dict:
        meta = {k: v for k, v in self.predictor.loaded.meta.items() if k != "sha256"}  # internals stay inside
        meta.setdefault("metrics", {})
        meta.setdefault("created", None)
        s = self.settings
        return {**meta, "backend": s.backend, "precision": self.predictor.precision,
                "limits": {"max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels,
                           "max_batch_files": MAX_BATCH_FILES},
                "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms}}


async def _uploads(request: Request, field: str) -> list[tuple[str, bytes]]:
    """The image(s) of a request: multipart `field` parts, or else the whole raw body (named 'body')."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        body = await request.body()
        if not body:
            raise HTTPException(400, f"missing file: send the image as the request body or as multipart "
                                     f"field {field!r}")
        return [("body", body)]
    form = await request.form(max_files=MAX_BATCH_FILES)
    parts = form.getlist(field)
    if not parts:
        raise HTTPException(400, f"missing file: multipart field {field!r} not found (got: "
                                 f"{', '.join(sorted(set(form.keys()))) or 'no fields'})")
    uploads = []
    for part in parts:
        if not isinstance(part, UploadFile):
            raise HTTPException(400, f"multipart field {field!r} must be a file upload, not a text value")
        uploads.append((part.filename or field, await part.read()))
    return uploads


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = " ".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app for one model; loads and verifies the model now, starts the batcher on startup."""
    service = ImageService(settings)

    @asynccontextmanager
    async def lifespan(_app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    classes = service.predictor.classes
    app = FastAPI(title="resnetcls", version="1", lifespan=lifespan,
                  description=f"{service.predictor.loaded.meta['arch']} classifier over {len(classes)} classes. "
                              + __doc__.split("\n\n")[2].replace("\n", " "))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    topk_query = Query(5, ge=1, le=1000, description=f"how many classes to return (at most {len(classes)})")

    @app.post("/predict", response_model=PredictResponse, responses=_errors(400, 413, 415, 422),
              openapi_extra=ONE_IMAGE_BODY, summary="Top-k classes for one image")
    async def predict(request: Request, topk: int = topk_query) -> PredictResponse:
        uploads = await _uploads(request, "file")
        if len(uploads) > 1:
            raise HTTPException(400, f"{len(uploads)} files sent to /predict; use /predict/batch for several")
        name, data = uploads[0]
        return PredictResponse(filename=name, top=await service.top(data, name, topk))

    @app.post("/predict/batch", response_model=BatchResponse, responses=_errors(400, 413, 422),
              openapi_extra=BATCH_BODY, summary="Top-k classes for several images (per-file errors)")
    async def predict_batch(request: Request, topk: int = topk_query) -> BatchResponse:
        uploads = await _uploads(request, "files")
        outcomes = await asyncio.gather(*(service.top(data, name, topk) for name, data in uploads),
                                        return_exceptions=True)
        results = []
        for (name, _), outcome in zip(uploads, outcomes):
            if isinstance(outcome, HTTPException):
                results.append(BatchItem(filename=name, status=outcome.status_code, error=str(outcome.detail)))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(BatchItem(filename=name, status=200, top=outcome))
        return BatchResponse(results=results)

    @app.get("/healthz", response_model=HealthResponse, responses=_errors(503), summary="Liveness")
    async def healthz() -> HealthResponse | JSONResponse:
        if not service.batcher.alive:
            return JSONResponse({"detail": "model thread stopped"}, 503)
        batcher = service.batcher
        return HealthResponse(status="ok", queued=batcher.queue.qsize(), batches_run=batcher.batches_run,
                              images_run=batcher.images_run)

    @app.get("/info", response_model=InfoResponse, summary="The model's metadata (model.json without internals)")
    async def info() -> InfoResponse:
        return InfoResponse(**service.info())

    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (--workers N): settings come from the environment."""
    raw = json.loads(os.environ[SETTINGS_ENV])
    workers = raw.pop("workers", 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # share the cores, do not oversubscribe
    return create_app(ServeSettings(**raw))


def _check_port(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the service with uvicorn until interrupted; each of `workers` processes loads its own model."""
    import uvicorn
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    _check_port(host, port)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    Predictor(settings.model, backend=settings.backend, precision=settings.precision)  # fail fast with exit 2 on a bad model directory
    os.environ[SETTINGS_ENV] = json.dumps({**asdict(settings), "workers": workers})
    uvicorn.run("resnetcls.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="info")
