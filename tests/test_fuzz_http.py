"""Fuzz the app under uvicorn with raw requests: status, one-line error, nothing logged, still serving."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time

import crafted_images as ci
import pytest
from test_serve import serving

from lenet_jax.serve import MAX_BODY_BYTES, create_app

GOOD = ci.encode(ci.digit_like())
CONNECTIONS = 40  # the fixture's uvicorn answers 503 beyond


@pytest.fixture(scope="module")
def server(untrained_predictor):
    app = create_app(predictor=untrained_predictor, queue_seconds=0.3, body_seconds=1)
    with serving(app, max_connections=CONNECTIONS, header_seconds=1.0) as port:
        app.state.port = port
        yield app


def request(method="POST", path="/predict", body=b"", content_type="image/png", length=True, headers=()):
    """A raw HTTP/1.1 request closing its connection; Content-Length: True the body's, None none, or text."""
    length = len(body) if length is True else length
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [] if content_type is None else [f"Content-Type: {content_type}"]
    lines += [] if length is None else [f"Content-Length: {length}"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode("latin-1") + body


def form(*parts, boundary="b0undary", declared=None):
    """A multipart request of parts (name, filename, content type, data); the header declares `declared`."""
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
        with contextlib.suppress(ConnectionResetError):  # closed with our request unread
            while chunk := connection.recv(65536):
                raw += chunk
    if not raw:
        return None, {}, b"", raw
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body, raw


class Broken:
    bug = "a deliberate bug"

    def predict_mnist(self, images):
        raise RuntimeError(self.bug)


class Held:
    """A predictor that holds its prediction slot until `go` is set."""

    def __init__(self, predictor):
        self.predictor, self.go, self.inside = predictor, threading.Event(), threading.Semaphore(0)

    def predict_mnist(self, images):
        self.inside.release()
        self.go.wait(30)
        return self.predictor.predict_mnist(images)


def chunked(*chunks):
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return request(length=None, headers=["Transfer-Encoding: chunked"]) + body


def bare(method, path="/predict"):
    return request(method, path, content_type=None, length=None)


LONG = "x" * 300_000
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n"
FORM_URLENCODED = "application/x-www-form-urlencoded"
OR_RESET = {"or_reset": True}  # or the connection reset, the request unread: closing may do that
BIG = b"x" * (MAX_BODY_BYTES // 4)
BUSY = "Exceeded concurrency limit."  # and uvicorn's 503 "Service Unavailable" beyond max_connections
PARSER = "Invalid HTTP request received."  # uvicorn's plain-text 400, before the app sees the request
CASES = [  # (id, request, status (None: closed unanswered), error (None: a prediction or no body), options)
    ("PNG body", request(body=GOOD), 200, None, {}),
    ("curl -F file=@digit.png", form(("file", "digit.png", "image/png", GOOD)), 200, None, {}),
    ("form: field, then file", form(("n", None, None, b"hi"), ("i", "d.png", None, GOOD)), 200, None, {}),
    ("form: file as octet-stream", form(("file", "d.bin", "application/octet-stream", GOOD)), 200, None, {}),
    ("form: only text fields", form(("note", None, None, b"hi")), 400, "the form holds no file", {}),
    ("form: no boundary", request(body=GOOD, content_type="multipart/form-data"), 400, "boundary", {}),
    ("form: 40 parts", form(*[("f", f"{i}.png", None, b"x") for i in range(40)]), 400, "files is 16", {}),
    ("octet-stream body", request(body=GOOD, content_type="application/octet-stream"), 200, None, {}),
    ("query string", request(path="/predict?mode=fast", body=GOOD), 200, None, {}),
    ("4096x4096 (the cap)", request(body=ci.big_digit()), 200, None, {}),
    ("sparse ink", request(body=ci.sparse_ink()), 422, "too little ink", {}),
    ("palette, transparent index", request(body=ci.DRAWINGS["P+transparency"]()), 200, None, {}),
    ("text/plain", request(body=GOOD, content_type="text/plain"), 415, "Content-Type must be one of", {}),
    ("no Content-Type", request(body=GOOD, content_type=None), 415, "not none", {}),
    ("curl --data-binary", request(body=GOOD, content_type=FORM_URLENCODED), 415, "-F file=@digit.png", {}),
    ("no Content-Length", request(length=None), 411, "Content-Length is required", {}),
    ("chunked", chunked(GOOD[:100], GOOD[100:]), 200, None, {}),
    ("chunked, over the cap", chunked(*[BIG] * 5), 413, "the body is over the 2,097,152 byte limit", {}),
    ("over the cap, sent", request(body=b"x" * (MAX_BODY_BYTES + 1)), 413, "over the 2,097,152 byte", {}),
    ("Content-Length -1, body never sent", request(length="-1"), 400, PARSER, {}),
    ("Content-Length -1 with a body", request(length="-1") + b"x" * 300_000, 400, PARSER, OR_RESET),
    ("Content-Length abc", request(length="abc"), 400, PARSER, {}),
    ("Content-Length +5", request(length="+5") + b"hello", 400, PARSER, {}),
    ("two Content-Lengths", request(length=5, headers=["Content-Length: 7"]) + b"hello", 400, PARSER, {}),
    ("600 MB declared, body never sent", request(length="600000000"), 413, "over the 2,097,152 byte", {}),
    ("empty body", request(), 400, "the image is empty", {}),
    ("not an image", request(body=b"GIF89a? no, just text"), 400, "not an image file", {}),
    ("truncated PNG", request(body=ci.truncated()), 422, "image file is truncated", {}),
    ("zTXt bomb", request(body=ci.ztxt_bomb()), 422, "Decompressed data too large", {}),
    ("20000x20000", request(body=ci.png_claiming(20000, 20000)), 413, "over the limit of 16,777,216", {}),
    ("4097x4096 header", request(body=ci.png_claiming(4097, 4096)), 413, "4097x4096 = 16,781,312 pixels", {}),
    ("blank image", request(body=ci.blank()), 422, "no ink", {}),
    ("body shorter than declared", request(length=100) + b"short", None, None, {"half_close": True}),
    ("body stalls", request(length=100) + b"short", 408, "stopped arriving", {}),
    ("idle connection", b"", None, None, {}),
    ("headers trickle, never end", b"GET / HTTP/1.1\r\nHost: x\r\n", None, None, {}),
    ("GET /predict", bare("GET"), 405, "GET is not allowed on /predict", {}),
    ("PUT /predict", request("PUT", body=GOOD), 405, "use POST", {}),
    ("HEAD /predict", bare("HEAD"), 405, None, {"allow": "POST"}),
    ("DELETE /", bare("DELETE", "/"), 405, "use GET or HEAD", {"allow": "GET, HEAD"}),
    ("OPTIONS /predict", bare("OPTIONS"), 405, "use POST", {}),
    ("HEAD /", bare("HEAD", "/"), 200, None, {}),
    ("unknown method", bare("BREW"), 405, "BREW is not allowed", {}),
    ("GET /nowhere", bare("GET", "/nowhere"), 404, "no page /nowhere", {}),
    ("POST /nowhere", request(path="/nowhere", body=GOOD), 404, "POST images to /predict", {}),
    ("garbage request line", b"GARBAGE\r\n\r\n", 400, PARSER, {}),
    ("blank request line", b"\r\n\r\n", 400, PARSER, {}),
    ("HTTP/0.9 POST", b"POST /predict\r\n\r\n", 400, PARSER, {}),
    ("bad version", b"GET / HTTP/x.y\r\n\r\n", 400, PARSER, {}),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n\r\n", 200, None, {}),  # h11 answers it as HTTP/1.1
    ("TLS handshake", TLS_HELLO, 400, PARSER, {}),
    # Over 16 kB of unfinished headers (LONG: more than one read of 256 kB): refused mid-request.
    ("URI too long", f"GET /{LONG} HTTP/1.1\r\n\r\n".encode(), 400, PARSER, OR_RESET),
    ("header too long", request(body=GOOD, headers=[f"X-Long: {LONG}"]), 400, PARSER, OR_RESET),
    ("120 headers", request(body=GOOD, headers=[f"X-{i}: {i}" for i in range(120)]), 200, None, {}),
    ("all prediction slots busy", request(body=GOOD), 503, "the server is busy", {"busy": True}),
    ("all connections busy", request(body=GOOD), 503, "Service Unavailable", {"connections": True}),
    ("form: wrong boundary", form(("f", "d.png", None, GOOD), declared="x"), 400, "Invalid multipart", {}),
    ("a bug in the predictor", request(body=GOOD), 500, "internal error (logged by the", {"bug": True}),
]


@pytest.mark.parametrize("data, status, error, options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_http_requests_fuzz(data, status, error, options, server, caplog):
    port, held, holders, predictor = server.state.port, [], [], server.state.predictor
    if bug := options.get("bug"):
        server.state.predictor = Broken()
    if options.get("busy"):  # every prediction slot taken by a request still predicting
        server.state.predictor = Held(predictor)
        holders = [threading.Thread(target=exchange, args=(port, request(body=GOOD))) for _ in range(2)]
        for thread in holders:
            thread.start()
            server.state.predictor.inside.acquire(timeout=30)
    if options.get("connections"):  # every connection taken (uvicorn counts them from the start)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        got, headers, body, raw = exchange(port, data, half_close=options.get("half_close", False))
    finally:
        for connection in held:
            connection.close()
        if holders:
            server.state.predictor.go.set()
            for thread in holders:
                thread.join(30)
        server.state.predictor = predictor
    if options.get("or_reset") and got is None:
        status = error = None
    assert got == status, raw[:300]
    if status is not None:
        assert raw.startswith(b"HTTP/1.1 %d " % status)
    if error is not None and headers["content-type"].startswith("text/plain"):  # uvicorn's own answer
        assert error in (PARSER, "Service Unavailable") and body.decode() == error
    elif error is not None:
        assert headers["content-type"] == "application/json"
        message = json.loads(body)["error"]
        assert error in message and "\n" not in message
        assert "Traceback" not in message and " at 0x" not in message
    elif status == 200 and data.startswith(b"POST"):
        answer = json.loads(body)
        assert 0 <= answer["prediction"] <= 9 and len(answer["input"]) == 28
        assert all(math.isfinite(p) for p in answer["probabilities"])
        assert abs(sum(answer["probabilities"]) - 1) < 1e-3
    if data.startswith(b"HEAD"):
        assert body == b""
    if "allow" in options:
        assert set(headers["allow"].split(", ")) == set(options["allow"].split(", "))
    if status == 503 and not options.get("connections"):
        assert headers["retry-after"] == "1"
    assert not any(r.exc_info for r in caplog.records)  # no traceback
    # Nothing logged but uvicorn's (or python-multipart's) one warning; for a bug, one line.
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    ours = [m for m in logged if m not in (PARSER, BUSY) and not m.startswith("Expected boundary")]
    assert ours == ([f"server error: RuntimeError: {Broken.bug} while serving POST /predict"] if bug else [])
    assert exchange(port, bare("GET", "/"))[0] == 200


def test_headers_trickled_by_32_clients_do_not_lock_out_a_new_one(server):
    """32 clients trickling headers past the 1 s deadline: a new one is served; each is closed unanswered."""
    slow = [socket.create_connection(("127.0.0.1", server.state.port), timeout=5) for _ in range(32)]
    for step, byte in enumerate(b"GET / HTTP"):
        for connection in slow:
            with contextlib.suppress(OSError):  # closed already
                connection.send(bytes([byte]))
        if step == 2:  # while they trickle
            assert exchange(server.state.port, bare("GET", "/"))[0] == 200
        time.sleep(0.2)
    for connection in slow:
        with connection, contextlib.suppress(ConnectionResetError):
            assert connection.recv(1) == b""
