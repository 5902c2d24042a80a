"""A draw-a-digit web page: a local HTTP server around the predictor.

GET / serves one page: a canvas to draw on (mouse or touch), a clear button, a live bar chart of
the 10 probabilities and the 28x28 image the model actually saw. The page POSTs the drawing as a
PNG to /predict, which answers JSON computed by the same preprocessing and predictor as
scripts/predict.py. Bad requests get a 4xx with a message, never a crash; requests are served on
threads, so several clients can draw at once.
"""

from __future__ import annotations

import io
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lenet_jax.predict import NoInkError, Predictor, preprocess

MAX_BODY_BYTES = 2 * 1024 * 1024  # a drawn digit is a few kB; refuse anything absurd
DISCARD_LIMIT = 16 * MAX_BODY_BYTES  # read (and drop) at most this much of an oversized body
MAX_PIXELS = 4096 * 4096
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp")

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
    """A request the server refuses: HTTP status and message."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def predict_image_bytes(predictor: Predictor, body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON answer for one uploaded image; RequestError for anything unusable."""
    if content_type.split(";")[0].strip().lower() not in IMAGE_TYPES:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be one of {', '.join(IMAGE_TYPES)}, not {content_type or 'none'!r}",
        )
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "image has too many pixels")
            array = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not a readable image ({e})") from e
    try:
        seen = preprocess(array)
    except NoInkError as e:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from e
    probabilities = predictor.predict_mnist(seen[None])[0]
    return {
        "prediction": int(np.argmax(probabilities)),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "input": seen[..., 0].tolist(),
    }


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """The HTTP server (not started: call serve_forever, or use `start_in_thread`)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "lenet-jax"

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _discard(self, length: int) -> None:
            remaining = min(length, DISCARD_LIMIT)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}: open /"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                if self.path != "/predict":
                    raise RequestError(HTTPStatus.NOT_FOUND, f"POST images to /predict, not {self.path}")
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
                if length > MAX_BODY_BYTES:
                    self._discard(length)  # so the client reads our answer, not a reset
                    raise RequestError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"body of {length} bytes is over the {MAX_BODY_BYTES} byte limit",
                    )
                body = self.rfile.read(length)
                answer = predict_image_bytes(predictor, body, self.headers.get("Content-Type", ""))
                self._json(HTTPStatus.OK, answer)
            except RequestError as e:
                self.close_connection = True  # an unread body must not be taken as a request
                self._json(e.status, {"error": str(e)})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: one line per drawing stroke would flood the console

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def start_in_thread(predictor: Predictor, host: str = "127.0.0.1", port: int = 0):
    """A running server on a background thread (port 0: any free port); returns it."""
    server = make_server(predictor, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
