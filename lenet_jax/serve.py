"""The draw-a-digit web app: Starlette around a Predictor under uvicorn (routes, bounds: docs/serving.md)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from importlib.resources import files

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from lenet_jax.errors import ConfigError
from lenet_jax.predict import (
    MAX_IMAGE_PIXELS,
    ImageError,
    ImageTooLargeError,
    Predictor,
    UnreadableImageError,
    load_predictor,
    one_line,
    preprocess,
    read_image,
    verdict,
)

MAX_BODY_BYTES = 2 * 1024 * 1024  # a drawn digit is a few kB; refuse anything absurd
TOO_LARGE = f"over the {MAX_BODY_BYTES:,} byte limit: send a smaller image"
MAX_PREDICTIONS = 2  # images decoded and predicted at once: a large one takes far more than its body
MAX_FORM_PARTS = 16  # files and fields of a multipart/form-data body
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond (each may hold a body of MAX_BODY_BYTES)
HEADER_SECONDS = 10.0  # a request's headers must be complete within this
MAX_HEADER_BYTES = 16 * 1024  # of a request line and headers still arriving (uvicorn answers 400 beyond)
UPLOAD_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp", "image/gif", "image/tiff")
UPLOAD_TYPES += ("application/octet-stream", "multipart/form-data")
UPLOAD_HOW = "curl: -F file=@digit.png, or -H 'Content-Type: image/png' --data-binary @digit.png"
PAGE = (files("lenet_jax") / "static" / "index.html").read_bytes()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    max_predictions: int = MAX_PREDICTIONS
    queue_seconds: float = 10.0  # how long a request waits for a prediction slot before a 503
    body_seconds: float = 30.0  # the whole body must arrive within this
    max_pixels: int = MAX_IMAGE_PIXELS
    debug: bool = False  # log a bug's traceback rather than one line


def create_app(
    workdir=None, *, epoch: int | None = None, predictor: Predictor | None = None, **bounds
) -> Starlette:
    """The ASGI app of `predictor`, else of workdir's (default $LENET_WORKDIR: uvicorn --factory)."""
    if predictor is None:
        workdir = workdir or os.environ.get("LENET_WORKDIR")
        if not workdir:
            raise ConfigError("create_app needs a workdir: pass one, or set LENET_WORKDIR")
        predictor = load_predictor(workdir, epoch)
    routes = [
        Route("/", lambda request: Response(PAGE, media_type="text/html; charset=utf-8")),
        Route("/healthz", lambda r: JSONResponse({"status": "ok", "epoch": r.app.state.predictor.epoch})),
        Route("/predict", predict, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: error_answer})
    app.state.predictor, app.state.bounds = predictor, Bounds(**bounds)
    app.state.slots = asyncio.Semaphore(app.state.bounds.max_predictions)
    return app


async def error_answer(request: Request, error: HTTPException) -> JSONResponse:
    """Every refusal as {"error": "one line"}; Starlette's own 404 and 405 say what to do."""
    path, message = request.url.path[:100], error.detail
    if error.status_code == 404:
        message = f"no page {path}: open / or POST images to /predict"
    elif error.status_code == 405:
        allowed = " or ".join(sorted((error.headers or {}).get("Allow", "").split(", ")))
        message = f"{request.method[:20]} is not allowed on {path}: use {allowed}"
    return JSONResponse({"error": message}, error.status_code, headers=error.headers)


async def predict(request: Request) -> Response:
    state, bounds = request.app.state, request.app.state.bounds
    try:
        kind = upload_kind(request.headers.get("content-type", ""))  # before reading the body
        image = await uploaded_image(request, kind, await read_body(request, bounds.body_seconds))
        try:
            async with asyncio.timeout(bounds.queue_seconds):
                await state.slots.acquire()
        except TimeoutError:
            busy = f"the server is busy ({bounds.max_predictions} predictions at once): retry in a moment"
            raise HTTPException(503, busy, {"Retry-After": "1"}) from None
        try:
            answer = await run_in_threadpool(predict_image_bytes, state.predictor, image, bounds.max_pixels)
            return JSONResponse(answer)
        finally:
            state.slots.release()
    except HTTPException:
        raise
    except ClientDisconnect:  # nobody to answer
        return Response(status_code=400)
    except Exception as e:  # a bug: the client gets a 500, the server's log one line
        what = f"{type(e).__name__}: {one_line(e)} while serving POST {request.url.path[:100]}"
        log.error("server error: %s", what, exc_info=e if bounds.debug else None)
        return JSONResponse({"error": "internal error (logged by the server)"}, 500)


def upload_kind(content_type: str) -> str:
    """The media type of an upload ('image/png', 'multipart/form-data', ...); 415 if not one."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        shown = repr(content_type[:60]) if content_type else "none"
        message = f"Content-Type must be one of {', '.join(UPLOAD_TYPES)}, not {shown} ({UPLOAD_HOW})"
        raise HTTPException(415, message)
    return kind


async def read_body(request: Request, seconds: float) -> bytes:
    """The body, refused from its Content-Length before it is read, cut at the cap if chunked."""
    declared = request.headers.get("content-length")
    if declared is None:
        if "chunked" not in request.headers.get("transfer-encoding", "").lower():
            raise HTTPException(411, "Content-Length is required (or Transfer-Encoding: chunked)")
    elif not (declared.isascii() and declared.isdigit()):
        raise HTTPException(400, f"Content-Length must be a number of bytes, not {declared[:40]!r}")
    elif int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {int(declared):,} bytes is {TOO_LARGE}")
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise HTTPException(413, f"the body is {TOO_LARGE}")
    except TimeoutError:
        raise HTTPException(408, f"the body stopped arriving (not complete within {seconds:g} s)") from None
    return bytes(body)


async def uploaded_image(request: Request, kind: str, body: bytes) -> bytes:
    """The image of a body: the body itself, or a multipart form's first file."""
    if kind == "multipart/form-data":

        async def replay() -> dict:  # the body again, already read within its bounds
            return {"type": "http.request", "body": body, "more_body": False}

        form_request = Request(request.scope, replay)
        async with form_request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS) as form:
            file = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
            if file is None:
                raise HTTPException(400, f"the form holds no file: {UPLOAD_HOW}")
            body = await file.read()
    if not body:
        raise HTTPException(400, "the image is empty: send the bytes of an image file")
    return body


def predict_image_bytes(predictor: Predictor, image: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> dict:
    """The /predict JSON of an image's bytes (the digit, probabilities, 28x28 input), else HTTPException."""
    try:
        seen = preprocess(read_image(image, max_pixels))
    except ImageTooLargeError as e:
        raise HTTPException(413, f"{e}: send a smaller image") from e
    except ImageError as e:  # not an image at all (400), or a damaged one or one without ink (422)
        raise HTTPException(400 if isinstance(e, UnreadableImageError) else 422, str(e)) from e
    probabilities = predictor.predict_mnist(seen[None])[0]
    # The digit, and whether it is unsure (with the runner-up); probabilities to 6 places.
    answer = {k: round(v, 6) if isinstance(v, float) else v for k, v in verdict(probabilities).items()}
    rounded = [round(float(p), 6) for p in probabilities]
    return {**answer, "probabilities": rounded, "input": seen[..., 0].tolist()}


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for headers: a client trickling them holds a place forever."""

    header_seconds = HEADER_SECONDS

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.deadline = self.loop.call_later(self.header_seconds, self.headers_late)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.deadline.cancel()
        self.deadline = self.loop.call_later(self.header_seconds, self.headers_late)

    def connection_lost(self, exc) -> None:
        self.deadline.cancel()
        super().connection_lost(exc)

    def headers_late(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request under way: still in its headers
            self.transport.close()


def uvicorn_server(
    app, *, max_connections=MAX_CONNECTIONS, header_seconds=HEADER_SECONDS, **config
) -> uvicorn.Server:
    """app under uvicorn with the connections' bounds (not started: `.run(sockets=[...])`)."""
    protocol = type("HeaderDeadline", (HeaderDeadline,), {"header_seconds": header_seconds})
    config = uvicorn.Config(
        app,
        http=protocol,
        limit_concurrency=max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=1,  # a stop cancels requests still running after 1 s
        access_log=False,  # one line per drawing stroke would flood the console
        **config,
    )
    return uvicorn.Server(config)
