"""Fuzz family "HTTP requests": the /predict server against malformed, oversized, hostile and
odd requests, sent as raw bytes. Each case checks the status line and code, a JSON error body
without a traceback or an object repr, that the server logged nothing (one line for a bug),
and that it still serves the page afterwards."""

from __future__ import annotations

import json
import math
import socket

import pytest
from crafted_images import (
    big_digit,
    blank,
    digit_like,
    drawing_in_mode,
    encode,
    png_claiming,
    sparse_ink,
    truncated,
    ztxt_bomb,
)

from lenet_jax.serve import MAX_CONNECTIONS, start_in_thread

GOOD = encode(digit_like())


@pytest.fixture(scope="module")
def server(untrained_predictor):
    server = start_in_thread(untrained_predictor, connection_timeout=1.0, queue_seconds=0.3, body_seconds=5)
    yield server
    server.shutdown()
    server.server_close()


def request(method="POST", path="/predict", body=b"", content_type="image/png", length=True, headers=()):
    """A raw HTTP/1.1 request; length: True for the body's, None for no Content-Length, or text."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is True:
        lines.append(f"Content-Length: {len(body)}")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode("latin-1") + body


def form(*parts, boundary="b0undary", declared=None):
    """A multipart/form-data request of parts (name, filename or None, content type or None,
    data), separated by boundary; the header declares `declared` (default: the same)."""
    body = b""
    for name, filename, kind, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += f"Content-Type: {kind}\r\n" if kind else ""
        body += head.encode() + b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return request(body=body, content_type=f"multipart/form-data; boundary={declared or boundary}")


def exchange(port, data, half_close=False, timeout=15):
    """Sends data, reads the answer until the server closes: (status or None, headers, body, raw)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(data)
            if half_close:
                connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking it all
            pass
        raw = b""
        while chunk := connection.recv(65536):
            raw += chunk
    if not raw:
        return None, {}, b"", raw
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body, raw


class Broken:
    def predict_mnist(self, images):
        raise RuntimeError("a deliberate bug")


LONG = "x" * 70_000
# (id, request bytes, expected status, text in the JSON error (None: a prediction or no body), options)
CASES = [
    ("PNG body", request(body=GOOD), 200, None, {}),
    ("curl -F file=@digit.png", form(("file", "digit.png", "image/png", GOOD)), 200, None, {}),
    (
        "form: text field, then the file",
        form(("note", None, None, b"hi"), ("image", "d.png", None, GOOD)),
        200,
        None,
        {},
    ),
    ("form: file as octet-stream", form(("file", "d.bin", "application/octet-stream", GOOD)), 200, None, {}),
    ("form: only text fields", form(("note", None, None, b"hi")), 400, "the form holds no file", {}),
    ("form: no boundary", request(body=GOOD, content_type="multipart/form-data"), 400, "boundary", {}),
    (
        "form: 40 parts",
        form(*[("f", f"{i}.png", "image/png", b"x") for i in range(40)]),
        413,
        "over 16 parts",
        {},
    ),
    ("octet-stream body", request(body=GOOD, content_type="application/octet-stream"), 200, None, {}),
    ("query string", request(path="/predict?mode=fast", body=GOOD), 200, None, {}),
    ("4096x4096 (the cap)", request(body=big_digit()), 200, None, {}),
    ("sparse ink", request(body=sparse_ink()), 422, "too little ink", {}),
    ("palette, transparent index", request(body=drawing_in_mode("P+transparency")), 200, None, {}),
    ("text/plain", request(body=GOOD, content_type="text/plain"), 415, "Content-Type must be one of", {}),
    ("no Content-Type", request(body=GOOD, content_type=None), 415, "not none", {}),
    (
        "curl --data-binary",
        request(body=GOOD, content_type="application/x-www-form-urlencoded"),
        415,
        "-F file=@digit.png",
        {},
    ),
    ("no Content-Length", request(length=None), 411, "Content-Length is required", {}),
    (
        "chunked",
        request(length=None, headers=["Transfer-Encoding: chunked"]) + b"5\r\nhello\r\n0\r\n\r\n",
        411,
        "Transfer-Encoding is not supported",
        {},
    ),
    ("Content-Length -1, body never sent", request(length="-1"), 400, "not '-1'", {}),
    ("Content-Length -1 with a body", request(length="-1") + b"x" * 300_000, 400, "not '-1'", {}),
    ("Content-Length abc", request(length="abc"), 400, "number of bytes", {}),
    ("Content-Length +5", request(length="+5") + b"hello", 400, "number of bytes", {}),
    (
        "two Content-Lengths",
        request(length=5, headers=["Content-Length: 7"]) + b"hello",
        400,
        "conflicting",
        {},
    ),
    (
        "600 MB declared, body never sent",
        request(length="600000000"),
        413,
        "over the 2,097,152 byte limit",
        {},
    ),
    ("empty body", request(), 400, "the image is empty", {}),
    ("not an image", request(body=b"GIF89a? no, just text"), 400, "not an image file", {}),
    ("truncated PNG", request(body=truncated()), 422, "image file is truncated", {}),
    ("zTXt bomb", request(body=ztxt_bomb()), 422, "Decompressed data too large", {}),
    (
        "20000x20000 header",
        request(body=png_claiming(20000, 20000)),
        413,
        "over the limit of 16,777,216 pixels",
        {},
    ),
    ("4097x4096 header", request(body=png_claiming(4097, 4096)), 413, "4097x4096 = 16,781,312 pixels", {}),
    ("blank image", request(body=blank()), 422, "no ink", {}),
    (
        "body shorter than declared",
        request(length=100) + b"short",
        400,
        "ended after 5 of 100 bytes",
        {"half_close": True},
    ),
    ("body stalls", request(length=100) + b"short", 408, "stopped arriving", {}),
    ("idle connection", b"", None, None, {}),
    (
        "GET /predict",
        request("GET", body=b"", content_type=None, length=None),
        405,
        "GET is not allowed on /predict",
        {},
    ),
    ("PUT /predict", request("PUT", body=GOOD), 405, "use POST", {}),
    ("HEAD /predict", request("HEAD", content_type=None, length=None), 405, None, {"allow": "POST"}),
    (
        "DELETE /",
        request("DELETE", "/", content_type=None, length=None),
        405,
        "use GET or HEAD",
        {"allow": "GET, HEAD"},
    ),
    ("OPTIONS /predict", request("OPTIONS", content_type=None, length=None), 405, "use POST", {}),
    ("HEAD /", request("HEAD", "/", content_type=None, length=None), 200, None, {}),
    ("unknown method", request("BREW", content_type=None, length=None), 501, "Unsupported method", {}),
    ("GET /nowhere", request("GET", "/nowhere", content_type=None, length=None), 404, "no page /nowhere", {}),
    ("POST /nowhere", request(path="/nowhere", body=GOOD), 404, "POST images to /predict", {}),
    ("garbage request line", b"GARBAGE\r\n\r\n", 400, "Bad request syntax", {}),
    ("blank request line", b"\r\n\r\n", 400, "empty request line", {}),
    ("HTTP/0.9 POST", b"POST /predict\r\n\r\n", 400, "Bad HTTP/0.9 request type", {}),
    ("bad version", b"GET / HTTP/x.y\r\n\r\n", 400, "Bad request version", {}),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n\r\n", 505, "Invalid HTTP version", {}),
    (
        "TLS handshake",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
        400,
        "Bad",
        {},
    ),
    ("URI too long", f"GET /{LONG} HTTP/1.1\r\n\r\n".encode(), 414, "URI Too Long", {}),
    ("header too long", request(body=GOOD, headers=[f"X-Long: {LONG}"]), 431, "Line too long", {}),
    (
        "120 headers",
        request(body=GOOD, headers=[f"X-{i}: {i}" for i in range(120)]),
        431,
        "Too many headers",
        {},
    ),
    ("all prediction slots busy", request(body=GOOD), 503, "the server is busy", {"busy": True}),
    ("all connections busy", request(body=GOOD), 503, "too many connections", {"connections": True}),
    (
        "form: wrong boundary",
        form(("file", "d.png", "image/png", GOOD), declared="other"),
        400,
        "no file",
        {},
    ),
    (
        "a bug in the predictor",
        request(body=GOOD),
        500,
        "internal error (logged by the server)",
        {"bug": True},
    ),
]


@pytest.mark.parametrize("data, status, error, options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_http_requests_fuzz(data, status, error, options, server, monkeypatch, capsys):
    if options.get("bug"):
        monkeypatch.setattr(server, "predictor", Broken())
    slots, held = server.prediction_slots, 0
    if options.get("busy"):
        held = server.max_predictions
    if options.get("connections"):
        slots, held = server.connection_slots, MAX_CONNECTIONS
    for _ in range(held):
        slots.acquire()
    try:
        got, headers, body, raw = exchange(
            server.server_port, data, half_close=options.get("half_close", False)
        )
    finally:
        for _ in range(held):
            slots.release()
    assert got == status, raw[:300]
    if status is not None:
        assert raw.startswith(b"HTTP/1.0 %d " % status)
    if error is not None:
        assert headers["Content-Type"] == "application/json"
        message = json.loads(body)["error"]
        assert error in message and "\n" not in message
        assert "Traceback" not in message and " at 0x" not in message
    elif status == 200 and not data.startswith(b"HEAD"):
        answer = json.loads(body)
        assert 0 <= answer["prediction"] <= 9 and len(answer["input"]) == 28
        assert all(math.isfinite(p) for p in answer["probabilities"])
        assert abs(sum(answer["probabilities"]) - 1) < 1e-3
    if data.startswith(b"HEAD"):
        assert body == b""
    if "allow" in options:
        assert headers["Allow"] == options["allow"]
    if status == 503:
        assert headers["Retry-After"] == "1"
    err = capsys.readouterr().err
    if options.get("bug"):  # a bug: one line on the server's console, no traceback
        assert len(err.splitlines()) == 1 and err.startswith("server error: RuntimeError: a deliberate bug")
    else:
        assert err == ""
    monkeypatch.undo()
    assert exchange(server.server_port, request("GET", "/", content_type=None, length=None))[0] == 200
