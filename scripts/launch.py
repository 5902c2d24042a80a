#!/usr/bin/env python
"""Start N local training processes of one data-parallel run (like torchrun's standalone mode).

    python scripts/launch.py --num-processes 2 -- --preset smoke --workdir checkpoints/dp

Everything after `--` goes to scripts/train.py. The launcher picks a free loopback port for the
coordinator, adds --coordinator/--num-processes/--process-id, forwards each process's output
with a `[rank]` prefix, and if one process dies (or exits non-zero) stops the others and exits
non-zero with a message saying which. Ctrl-C / SIGTERM are passed on to every process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent / "train.py"
MAX_PROCESSES = 1024  # each is a Python process with JAX: more would only exhaust the machine
GRACE_SECONDS = 10  # after a failure: SIGTERM the others, then SIGKILL after this long


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line and exit code 2, like the other scripts (lenet_jax.cli is
    not imported: the launcher starts in milliseconds and needs no JAX)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward(stream, rank: int, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{rank}] {line}")
        out.flush()


def stop_all(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + GRACE_SECONDS
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then scripts/train.py flags")
    args = parser.parse_args()
    if not 1 <= args.num_processes <= MAX_PROCESSES:
        parser.error(f"--num-processes must be 1 to {MAX_PROCESSES}, not {args.num_processes}")
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    coordinator = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = []
    for rank in range(args.num_processes):
        command = [
            sys.executable,
            str(TRAIN),
            *train_args,
            "--coordinator",
            coordinator,
            "--num-processes",
            str(args.num_processes),
            "--process-id",
            str(rank),
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        processes.append(process)
        threading.Thread(target=forward, args=(process.stdout, rank, sys.stdout), daemon=True).start()
        threading.Thread(target=forward, args=(process.stderr, rank, sys.stderr), daemon=True).start()

    def pass_on(signum, frame):
        for p in processes:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, pass_on)
    signal.signal(signal.SIGTERM, pass_on)
    # Poll: a process that died makes its peers wait in a collective forever, so the launcher
    # notices within a second and stops them.
    while True:
        codes = [p.poll() for p in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, code = failed[0]
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            stop_all(processes)
            time.sleep(0.2)  # let the forwarding threads print the last lines
            print(f"error: process {rank} {how}; stopped the other processes", file=sys.stderr)
            return code if code > 0 else 1
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
