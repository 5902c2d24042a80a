#!/usr/bin/env python
"""Load check of the draw-a-digit server: peak memory under concurrent large images, how fast it
refuses a body it will not read, and how many drawn digits it answers per second.

    python benchmarks/serve_load.py --workdir checkpoints/recipe [--concurrent 8] [--side 4096]

Starts `scripts/serve.py` (--serve-script: another version's) and warms it up with one drawing;
then --concurrent POSTs at once of a side x side RGBA PNG digit, one POST declaring
`Content-Length: -1` with a big body streamed alongside, and 280x280 drawings (what the page
sends) from --clients clients for --seconds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status)[1]) / 1024


def digit_png(side: int) -> bytes:
    image = np.full((side, side, 4), 255, np.uint8)  # opaque white paper, as the canvas sends
    image[side // 5 : side * 4 // 5, side * 9 // 20 : side * 11 // 20, :3] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def post(port: int, body: bytes, timeout: float = 300) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("POST", "/predict", body, {"Content-Type": "image/png", "Connection": "close"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def minus_one_length(port: int, body_bytes: int) -> dict:
    """POST with Content-Length: -1 and a big body sent alongside; when does the answer come?"""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: -1\r\n\r\n"
    sent = [0]

    def send() -> None:
        block = b"x" * (1 << 20)
        try:
            connection.sendall(head)
            while sent[0] < body_bytes:
                sent[0] += connection.send(block)
        except OSError:
            pass

    start = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
            answer += chunk
    except OSError:
        pass
    seconds = time.monotonic() - start
    sender.join(30)
    connection.close()
    status = int(answer.split()[1]) if answer else None
    sent_mb = round(sent[0] / 2**20, 1)
    return {"status": status, "answered_in_s": round(seconds, 3), "body_mb_sent_before_close": sent_mb}


def requests_per_second(port: int, body: bytes, clients: int, seconds: float) -> float:
    """Drawings answered 200 per second by `clients` clients sending them one after another."""
    start = time.monotonic()
    end = start + seconds

    def client(_) -> int:
        answered = 0
        while time.monotonic() < end:
            answered += post(port, body) == 200
        return answered

    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(client, range(clients)))
    return round(answered / (time.monotonic() - start), 1)


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--workdir", required=True, help="a training run's workdir (any checkpoint)")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--body-mb", type=int, default=600, help="body sent with Content-Length: -1")
    parser.add_argument("--clients", type=int, default=4, help="clients sending drawings at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they send them")
    parser.add_argument("--serve-script", default=str(REPO_ROOT / "scripts" / "serve.py"))
    args = parser.parse_args()
    command = [sys.executable, args.serve_script, "--workdir", args.workdir, "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        found = re.search(r":(\d+)/", line)
        if not found:
            print(f"server did not start: {line}{server.stderr.read()}", file=sys.stderr)
            return 1
        port = int(found[1])
        post(port, digit_png(280))  # compiles the forward pass
        rss_before = rss_mb(server.pid, "VmRSS")
        body = digit_png(args.side)
        start = time.monotonic()
        with ThreadPoolExecutor(args.concurrent) as pool:
            statuses = list(pool.map(lambda _: post(port, body), range(args.concurrent)))
        seconds = time.monotonic() - start
        peak = rss_mb(server.pid, "VmHWM")
        refused = minus_one_length(port, args.body_mb << 20)
        drawings_per_s = requests_per_second(port, digit_png(280), args.clients, args.seconds)
        result = {
            "benchmark": "serve_load",
            "concurrent": args.concurrent,
            "image": f"{args.side}x{args.side} RGBA PNG, {len(body)} bytes",
            "answers": dict(Counter(str(s) for s in statuses)),
            "seconds": round(seconds, 2),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1),
            "content_length_minus_1": refused,
            "drawings_per_s": drawings_per_s,
            "clients": args.clients,
            "rss_after_mb": round(rss_mb(server.pid, "VmRSS"), 1),
            "peak_rss_after_mb": round(rss_mb(server.pid, "VmHWM"), 1),
        }
        print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
