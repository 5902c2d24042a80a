"""A draw-a-digit web page: a local HTTP server around the predictor.

GET / serves one page: a canvas to draw on (mouse or touch), a clear button, a live bar chart of
the 10 probabilities and the 28x28 image the model actually saw. The page POSTs the drawing as a
PNG to /predict, which answers JSON computed by the same preprocessing and predictor as
scripts/predict.py; /predict also takes a `multipart/form-data` upload (`curl -F file=@x.png`).

The server has bounds, so no request can take it down: the body size is checked from its
Content-Length before it is read, an image's pixel count from its header before it is decoded,
predictions run at most `max_predictions` at a time (others wait, then get 503), connections
at most `max_connections` at a time, and a silent connection is closed after `connection_timeout`
seconds. Every answer but the page is JSON; errors are {"error": "one line"} with their status
(400, 404, 405, 411, 413, 415, 422, 503; 500 for a bug, logged in one line on the server).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import json
import re
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from lenet_jax.predict import (
    MAX_IMAGE_PIXELS,
    ImageError,
    ImageTooLargeError,
    Predictor,
    UnreadableImageError,
    one_line,
    preprocess,
    read_image,
)

MAX_BODY_BYTES = 2 * 1024 * 1024  # a drawn digit is a few kB; refuse anything absurd
MAX_PIXELS = MAX_IMAGE_PIXELS  # decoded pixels per image, checked from the header
# After refusing a body unread, read and drop at most this much of it (for at most
# DISCARD_SECONDS), so that a client still sending it reads our answer rather than a reset.
DISCARD_LIMIT = 4 * MAX_BODY_BYTES
DISCARD_SECONDS = 2.0
MAX_PREDICTIONS = 2  # images decoded and predicted at once: a large one takes far more than its body
QUEUE_SECONDS = 30.0  # how long a request waits for a prediction slot before a 503
MAX_CONNECTIONS = 32  # connections served at once (each may hold a body of MAX_BODY_BYTES)
CONNECTION_TIMEOUT = 20.0  # seconds a connection may stay silent before it is closed
BODY_SECONDS = 120.0  # the whole body must arrive within this
MAX_FORM_PARTS = 16  # parts of a multipart/form-data body
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp", "image/gif", "image/tiff")
UPLOAD_TYPES = (*IMAGE_TYPES, "application/octet-stream", "multipart/form-data")
ROUTES = {"/": ("GET", "HEAD"), "/index.html": ("GET", "HEAD"), "/predict": ("POST",)}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lenet-jax: draw a digit</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; color: #222; }
 #row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
 canvas#pad { border: 2px solid #444; border-radius: 6px; touch-action: none; cursor: crosshair;
   background: #fff; }
 #bars { display: grid; grid-template-columns: 1.5em 14em 4em; gap: 4px 8px;
   align-items: center; }
 .bar { height: 1.1em; background: #3a7bd5; width: 0; transition: width .15s; }
 .best .bar { background: #e0533d; }
 #prediction { font-size: 4em; font-weight: bold; min-height: 1.2em; }
 #seen { image-rendering: pixelated; width: 112px; height: 112px; border: 1px solid #888;
   background: #000; }
 #message { color: #a33; min-height: 1.2em; }
</style></head>
<body>
<h1>Draw a digit</h1>
<div id="row">
 <div><canvas id="pad" width="280" height="280"></canvas><br>
  <button id="clear">Clear</button> <span id="message"></span></div>
 <div><div>Prediction</div><div id="prediction">&nbsp;</div>
  <div>What the model saw (28x28)</div><canvas id="seen" width="28" height="28"></canvas></div>
 <div id="bars"></div>
</div>
<script>
const pad = document.getElementById("pad"), ctx = pad.getContext("2d");
const bars = document.getElementById("bars");
for (let d = 0; d < 10; d++) {
  bars.insertAdjacentHTML("beforeend",
    `<div>${d}</div><div id="row${d}"><div class="bar" id="bar${d}"></div></div>` +
    `<div id="p${d}">0.000</div>`);
}
function clearPad() {
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, pad.width, pad.height);
  document.getElementById("prediction").innerHTML = "&nbsp;";
  document.getElementById("message").textContent = "";
  for (let d = 0; d < 10; d++) { show(d, 0, false); }
  document.getElementById("seen").getContext("2d").clearRect(0, 0, 28, 28);
}
function show(d, p, best) {
  document.getElementById("bar" + d).style.width = (100 * p) + "%";
  document.getElementById("p" + d).textContent = p.toFixed(3);
  document.getElementById("row" + d).className = best ? "best" : "";
}
let drawing = false, last = null, pending = false, again = false;
function point(e) { const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; }
pad.addEventListener("pointerdown", e => {
  drawing = true; last = point(e); pad.setPointerCapture(e.pointerId); });
pad.addEventListener("pointermove", e => {
  if (!drawing) return;
  const p = point(e);
  ctx.strokeStyle = "#000"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  last = p; predict();
});
["pointerup", "pointercancel", "pointerleave"].forEach(t => pad.addEventListener(t, () => {
  if (drawing) { drawing = false; predict(); } }));
document.getElementById("clear").addEventListener("click", clearPad);
async function predict() {
  if (pending) { again = true; return; }   // one request in flight; the latest drawing follows
  pending = true;
  try {
    const blob = await new Promise(r => pad.toBlob(r, "image/png"));
    const response = await fetch("predict", { method: "POST", body: blob,
                                              headers: { "Content-Type": "image/png" } });
    const result = await response.json();
    if (!response.ok) { document.getElementById("message").textContent = result.error; }
    else {
      document.getElementById("message").textContent = "";
      document.getElementById("prediction").textContent = result.prediction;
      result.probabilities.forEach((p, d) => show(d, p, d === result.prediction));
      const seen = document.getElementById("seen").getContext("2d");
      const img = seen.createImageData(28, 28);
      result.input.flat().forEach((v, i) => { img.data.set([v, v, v, 255], 4 * i); });
      seen.putImageData(img, 0, 0);
    }
  } finally {
    pending = false;
    if (again) { again = false; predict(); }
  }
}
clearPad();
</script>
</body></html>
"""


class RequestError(Exception):
    """A request the server refuses: HTTP status, message and extra response headers."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def upload_kind(content_type: str) -> str:
    """The media type of an upload ('image/png', 'multipart/form-data', ...); 415 if not one."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        shown = repr(content_type[:60]) if content_type else "none"
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be one of {', '.join(UPLOAD_TYPES)}, not {shown} "
            "(curl: -H 'Content-Type: image/png' --data-binary @digit.png, or -F file=@digit.png)",
        )
    return kind


def image_of_upload(body: bytes, content_type: str) -> bytes:
    """The image bytes of a request body: the body itself, or a multipart form's file."""
    if upload_kind(content_type) == "multipart/form-data":
        body = form_file(body, content_type)
    if not body:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the image is empty: send the bytes of an image file")
    return body


def form_file(body: bytes, content_type: str) -> bytes:
    """The uploaded file of a multipart/form-data body (its first part with a file name, else
    its first image part); RequestError if there is none."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(HTTPStatus.BAD_REQUEST, "multipart/form-data needs a boundary=... parameter")
    if body.count(b"--" + boundary.encode("latin-1", "replace")) > MAX_FORM_PARTS + 1:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the form has over {MAX_FORM_PARTS} parts: send one file"
        )
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    chosen = next((p for p in parts if p.get_filename()), None) or next(
        (p for p in parts if p.get_content_type() in IMAGE_TYPES), None
    )
    if chosen is None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "the form holds no file: upload the image as a file (curl -F file=@digit.png)",
        )
    payload = chosen.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def predict_image_bytes(
    predictor: Predictor, body: bytes, content_type: str, max_pixels: int = MAX_PIXELS
) -> dict[str, Any]:
    """The JSON answer for one uploaded image; RequestError for anything unusable."""
    image = image_of_upload(body, content_type)
    try:
        seen = preprocess(read_image(image, max_pixels))
    except ImageTooLargeError as e:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{e}: send a smaller image") from e
    except UnreadableImageError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from e
    except ImageError as e:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from e
    probabilities = predictor.predict_mnist(seen[None])[0]
    return {
        "prediction": int(np.argmax(probabilities)),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "input": seen[..., 0].tolist(),
    }


class ClientGone(Exception):
    """The client closed the connection or fell silent: nobody to answer."""


class Handler(BaseHTTPRequestHandler):
    """One connection: one request (HTTP/1.0), answered by ROUTES or with a JSON error."""

    server: Server
    server_version = "lenet-jax"
    default_request_version = "HTTP/1.0"  # so that even a garbage request line gets a status line

    def setup(self) -> None:
        self.timeout = self.server.connection_timeout
        super().setup()
        self._unread_body = False
        self._answered = False

    def parse_request(self) -> bool:
        if not self.raw_requestline.strip():  # http.server would close without a word
            self.command, self.request_version = None, self.default_request_version
            self.requestline = ""
            self.send_error(HTTPStatus.BAD_REQUEST, "empty request line")
            return False
        return super().parse_request()

    # Every method a route may be asked with; the route decides (405 with Allow otherwise).
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_GET

    def _dispatch(self) -> None:
        declared = self.headers.get("Content-Length", "").strip()
        self._unread_body = declared not in ("", "0") or "Transfer-Encoding" in self.headers
        try:
            self._route()
        except RequestError as e:
            self._json(e.status, {"error": str(e)}, e.headers)
        except ClientGone:
            self.close_connection = True
        except Exception as e:  # a bug: the client gets a 500, the server's console one line
            self.server.log_failure(f"{self.command} {self.path[:100]}", e)
            if not self._answered:
                self._json(
                    HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (logged by the server)"}
                )
            self.close_connection = True

    def _route(self) -> None:
        path = urlsplit(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            raise RequestError(
                HTTPStatus.NOT_FOUND, f"no page {path[:100]}: open / or POST images to /predict"
            )
        if self.command not in allowed:
            raise RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{self.command} is not allowed on {path}: use {' or '.join(allowed)}",
                {"Allow": ", ".join(allowed)},
            )
        if path == "/predict":
            self._predict()
        else:
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")

    def _predict(self) -> None:
        length = self._content_length()
        content_type = self.headers.get("Content-Type", "")
        upload_kind(content_type)  # a wrong type is refused before reading the body
        body = self._read_body(length)
        if not self.server.prediction_slots.acquire(timeout=self.server.queue_seconds):
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server is busy ({self.server.max_predictions} predictions at once): retry in a moment",
                {"Retry-After": "1"},
            )
        try:
            answer = predict_image_bytes(self.server.predictor, body, content_type, self.server.max_pixels)
        finally:
            self.server.prediction_slots.release()
        self._json(HTTPStatus.OK, answer)

    def _content_length(self) -> int:
        """The declared body size, checked before a byte of the body is read."""
        if "Transfer-Encoding" in self.headers:
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED,
                "send the body with a Content-Length (Transfer-Encoding is not supported)",
            )
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not values:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if len(values) > 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, "conflicting Content-Length headers")
        text = values.pop()
        if not re.fullmatch(r"[0-9]{1,18}", text):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"Content-Length must be a number of bytes, not {text[:40]!r}"
            )
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length:,} bytes is over the {MAX_BODY_BYTES:,} byte limit: send a smaller image",
            )
        return length

    def _read_body(self, length: int) -> bytes:
        body = bytearray()
        deadline = time.monotonic() + self.server.body_seconds
        try:
            while len(body) < length:
                if time.monotonic() > deadline:
                    raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "the body took too long to arrive")
                chunk = self.rfile.read1(min(length - len(body), 65536))
                if not chunk:
                    raise RequestError(
                        HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes"
                    )
                body += chunk
        except TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "the body stopped arriving") from None
        except ConnectionError:
            raise ClientGone from None
        self._unread_body = False
        return bytes(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a garbage request line, too long headers, an unknown
        method) answered as JSON, like ours."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._json(HTTPStatus(code), {"error": text[:300]})

    def _json(
        self, status: HTTPStatus, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self._answered = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status >= 400:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            if self._unread_body:
                self._discard_body()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _discard_body(self) -> None:
        """The answer sent, reads and drops what the client still sends of a refused body, a
        bounded amount: a client blocked sending it would otherwise read a reset, not the answer."""
        self.close_connection = True
        self._unread_body = False
        deadline, dropped = time.monotonic() + DISCARD_SECONDS, 0
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while dropped < DISCARD_LIMIT and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:  # the client left or went quiet: the answer is out either way
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: one line per drawing stroke would flood the console


class Server(ThreadingHTTPServer):
    """The HTTP server with its bounds (see the module's docstring)."""

    daemon_threads = True

    def __init__(
        self,
        predictor: Predictor,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_predictions: int = MAX_PREDICTIONS,
        queue_seconds: float = QUEUE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        connection_timeout: float = CONNECTION_TIMEOUT,
        body_seconds: float = BODY_SECONDS,
        max_pixels: int = MAX_PIXELS,
        debug: bool = False,
    ):
        self.predictor, self.max_pixels, self.debug = predictor, max_pixels, debug
        self.max_predictions, self.queue_seconds = max_predictions, queue_seconds
        self.connection_timeout, self.body_seconds = connection_timeout, body_seconds
        self.prediction_slots = threading.BoundedSemaphore(max_predictions)
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)

    def process_request(self, request, client_address) -> None:
        if not self.connection_slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        body = json.dumps({"error": "the server is busy (too many connections): retry in a moment"})
        answer = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}"
        )
        try:
            request.settimeout(1.0)
            request.sendall(answer.encode())
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, (ConnectionError, TimeoutError)):  # a client left
            self.log_failure(f"a connection from {client_address[0]}", error)

    def log_failure(self, what: str, error: BaseException) -> None:
        """One line on the console for an unexpected error (its traceback with debug)."""
        if self.debug:
            traceback.print_exception(error, file=sys.stderr)
        else:
            message = f"server error: {type(error).__name__}: {one_line(error)} while serving {what}"
            print(message, file=sys.stderr, flush=True)


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> Server:
    """The HTTP server (not started: call serve_forever, or use `start_in_thread`); limits are
    Server's keyword arguments. OSError if it cannot listen on host:port."""
    return Server(predictor, host, port, **limits)


def start_in_thread(predictor: Predictor, host: str = "127.0.0.1", port: int = 0, **limits: Any) -> Server:
    """A running server on a background thread (port 0: any free port); returns it."""
    server = make_server(predictor, host, port, **limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
