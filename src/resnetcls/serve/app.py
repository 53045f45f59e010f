"""HTTP service around Predictor: FastAPI app + uvicorn. Imports nothing from engine/.

Endpoints: POST /predict (one image: multipart field `file`, or the raw image as the request body),
POST /predict/batch (multipart, one or more `files` fields), POST /explain (one image, as /predict; optional
?class=NAME, else the top-1 class: the Grad-CAM overlay as image/png, the class and its probability in the
X-Class (percent-encoded UTF-8) and X-Probability headers; explain.py), GET /healthz, GET /info, and the
OpenAPI schema at /openapi.json (browsable at /docs). /explain passes the same body, pixel and decode-budget
admission as /predict; explanations run one at a time (a backward pass each, in fp32) on a private copy of
the weights made at the first request, on the model thread between batches, at most --max-queue waiting,
beyond that 503. With open-set rejection on (--open-set; a model with an open-set threshold) /predict and each
predicted file of /predict/batch also answer label ("unknown" below the threshold), unknown and
open_set_score; /info's open_set says the score, threshold and accepted share. A multi-label model (model.json
"multi_label") answers labels, every class at or above its threshold (--threshold: one for all), and /info
says multi_label true with the thresholds.

Batching policy: requests are decoded and preprocessed in parallel threads, then queued for one model
thread. Whenever that thread is free it takes everything queued, up to --max-batch images, and runs them as
one batch; with --batch-wait-ms W > 0 it first waits up to W ms for more to arrive. So an idle server answers
a lone request at batch size 1 with no added delay, and under concurrent load batches grow by themselves
(each model call amortises its fixed cost over more images), without a timer adding latency by default.

Limits, each a JSON error `{"detail": "..."}`: body over --max-body-mb -> 413; not an image or an unsupported
format -> 415; decodable but more pixels than --max-pixels (decompression bomb) -> 422; no image sent -> 400;
bad query parameters -> 422; a /predict/batch whose images total more than --max-batch-pixels -> 413.
Admission (serve/admission.py): a request counts as being processed once its body has fully arrived; at most
--max-connections are processed at once (GET /healthz and /info never count). Each decode reserves its peak
memory (from the image's header) from a budget of --max-decode-mb, waiting up to --admission-wait-s for room,
and at most --max-queue images wait for the model thread; past any of these the answer is 503 with
Retry-After, so a burst is shed instead of the process being killed for memory. Connections that are idle or
still sending their request never count toward --max-connections: they have their own caps
(--max-idle-connections, --max-idle-per-client: past them the longest-waiting one is closed) and timeouts
(--keep-alive-s, --header-timeout-s, --body-timeout-s), so slow clients cannot starve the others or
/healthz. A body over --max-body-mb gets 413 and the connection is closed at once, so the rest of an
oversized upload is never read. /healthz answers 503 once a model call has run longer than --stall-s.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import asdict

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import UserError
from ..inference.predictor import Predictor
from .admission import RequestGate, SlowClientH11Protocol
from .schema import (
    BATCH_BODY,
    EXPLAIN_RESPONSE,
    MAX_BATCH_FILES,
    ONE_IMAGE_BODY,
    BatchResponse,
    HealthResponse,
    InfoResponse,
    PredictResponse,
    ServeSettings,
    errors,
)
from .service import ImageService

SETTINGS_ENV = "RESNETCLS_SERVE_SETTINGS"  # how --workers N hands the settings to each worker process
log = logging.getLogger("resnetcls.serve")


async def _uploads(request: Request, field: str) -> list[tuple[str, bytes]]:
    """The image(s) of a request: multipart `field` parts, or else the whole raw body (named 'body')."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        body = await request.body()
        if not body:
            raise HTTPException(
                400, f"missing file: send the image as the request body or as multipart field {field!r}"
            )
        return [("body", body)]
    form = await request.form(max_files=MAX_BATCH_FILES)
    parts = form.getlist(field)
    if not parts:
        raise HTTPException(
            400,
            f"missing file: multipart field {field!r} not found (got: "
            f"{', '.join(sorted(set(form.keys()))) or 'no fields'})",
        )
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
    async def internal_error(request, exc: Exception):
        # the traceback goes to the server log; the client learns nothing about paths, code or versions
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error (details are in the server log)"}, 500)


def _add_explain_route(app: FastAPI, service: ImageService) -> None:
    """POST /explain: the Grad-CAM overlay of one image (see the module docstring)."""

    @app.post(
        "/explain",
        response_class=Response,
        openapi_extra=ONE_IMAGE_BODY,
        responses={**EXPLAIN_RESPONSE, **errors(400, 408, 413, 415, 422, 503)},
        summary="Grad-CAM overlay (PNG) of one image for a class (default: the top-1)",
    )
    async def explain(
        request: Request,
        class_name: str | None = Query(
            None, alias="class", description="the class to explain (default: the predicted one)"
        ),
    ) -> Response:
        uploads = await _uploads(request, "file")
        if len(uploads) > 1:
            raise HTTPException(400, f"{len(uploads)} files sent to /explain; send one image")
        name, data = uploads[0]
        png, explained, prob = await service.explain(data, name, class_name)
        return Response(
            png,
            media_type="image/png",
            headers={"X-Class": urllib.parse.quote(explained), "X-Probability": f"{prob:.6f}"},
        )


def _lifespan(service: ImageService):
    """The app's lifespan: the batcher runs from startup to shutdown."""

    @asynccontextmanager
    async def lifespan(_app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    return lifespan


def _add_predict_routes(app: FastAPI, service: ImageService) -> None:
    """POST /predict (one image) and POST /predict/batch (several, each with its own status)."""
    classes = service.predictor.classes
    topk_query = Query(5, ge=1, le=1000, description=f"how many classes to return (at most {len(classes)})")

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=errors(400, 408, 413, 415, 422, 503),
        openapi_extra=ONE_IMAGE_BODY,
        summary="Top-k classes for one image",
    )
    async def predict(request: Request, topk: int = topk_query) -> PredictResponse:
        uploads = await _uploads(request, "file")
        if len(uploads) > 1:
            raise HTTPException(400, f"{len(uploads)} files sent to /predict; use /predict/batch for several")
        name, data = uploads[0]
        return PredictResponse(filename=name, **await service.top(data, name, topk))

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses=errors(400, 408, 413, 422),
        openapi_extra=BATCH_BODY,
        summary="Top-k classes for several images (per-file errors)",
    )
    async def predict_batch(request: Request, topk: int = topk_query) -> BatchResponse:
        uploads = await _uploads(request, "files")
        return BatchResponse(results=await service.top_of_batch(uploads, topk))


def _add_status_routes(app: FastAPI, service: ImageService) -> None:
    """GET /healthz (503 once the model thread stopped or stalled) and GET /info."""

    @app.get("/healthz", response_model=HealthResponse, responses=errors(503), summary="Liveness")
    async def healthz() -> HealthResponse | JSONResponse:
        batcher = service.batcher
        if not batcher.alive:
            return JSONResponse({"detail": "model thread stopped"}, 503)
        stall_s = service.settings.stall_s
        if batcher.stalled_s() > stall_s:
            return JSONResponse(
                {
                    "detail": f"model thread has made no progress for {batcher.stalled_s():.0f} s "
                    f"(limit {stall_s:g} s) with {batcher.queue.qsize()} more "
                    f"images waiting"
                },
                503,
            )
        return HealthResponse(
            status="ok",
            decode_mb_in_use=round(service.budget.in_use / 1e6, 1),
            queued=batcher.queue.qsize(),
            batches_run=batcher.batches_run,
            images_run=batcher.images_run,
        )

    @app.get(
        "/info", response_model=InfoResponse, summary="The model's metadata (model.json without internals)"
    )
    async def info() -> InfoResponse:
        return InfoResponse(**service.info())


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app for one model; loads and verifies the model now, starts the batcher on startup."""
    service = ImageService(settings)
    app = FastAPI(
        title="resnetcls",
        version="1",
        lifespan=_lifespan(service),
        description=f"{service.predictor.loaded.meta['arch']} classifier over "
        f"{len(service.predictor.classes)} classes. " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    app.state.service = service  # what the endpoints share (tests and embedding apps reach it here)
    app.add_middleware(
        RequestGate,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_in_flight=settings.max_connections,
        exempt=("/healthz", "/info"),
    )
    _install_error_handlers(app)
    _add_predict_routes(app, service)
    _add_explain_route(app, service)
    _add_status_routes(app, service)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (--workers N): settings come from the environment."""
    raw = json.loads(os.environ[SETTINGS_ENV])
    workers = raw.pop("workers", 1)
    settings = ServeSettings(**raw)
    _configure_connections(settings)  # this process's own copy of the protocol class
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # share the cores, do not oversubscribe
    return create_app(settings)


def _configure_connections(settings: ServeSettings) -> None:
    SlowClientH11Protocol.configure(
        settings.header_timeout_s, settings.max_idle_connections, settings.max_idle_per_client
    )


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
    settings.check()
    _check_port(host, port)
    _configure_connections(settings)
    # No limit_concurrency: uvicorn's counts every open connection, so idle or half-sent ones (a slowloris
    # client) would turn every request into a 503, /healthz included. RequestGate counts only the requests
    # being processed, SlowClientH11Protocol caps the rest; timeout_keep_alive closes idle keep-alive ones.
    options = dict(
        host=host,
        port=port,
        log_level="info",
        http=SlowClientH11Protocol,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=None,
    )
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Fail fast, with exit 2, on a bad model directory or precision before the workers start.
    Predictor(
        settings.model,
        backend=settings.backend,
        precision=settings.precision,
        open_set=settings.open_set,
        unknown_accept=settings.unknown_accept,
        label_threshold=settings.threshold,
    )
    os.environ[SETTINGS_ENV] = json.dumps({**asdict(settings), "workers": workers})
    # uvicorn kills a worker that does not answer its supervisor's ping within timeout_worker_healthcheck
    # (default 5 s), and a worker answers only once it has imported torch and the app: on a busy machine that
    # took longer, and every worker was killed and restarted in a loop without ever serving.
    uvicorn.run(
        "resnetcls.serve.app:app_from_env",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=60,
        **options,
    )
