#!/usr/bin/env python
"""Kill-and-resume check: SIGKILL a short training run at random moments, resume it, and compare
the result with an uninterrupted run bit for bit.

    python scripts/kill_resume_check.py --trials 20 --data-dir ../shared/data/mnist

Each trial starts `scripts/train.py` on a 3-epoch real-MNIST subset, kills it with SIGKILL after a
random delay (anywhere from start-up to the final save), reruns the same command until it
finishes, and checks every parameter array and every metrics.jsonl row (timings aside) against
the reference run. Prints one JSON line per trial and a summary line; exits 1 if any differ.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from lenet_jax.cli import quiet_library_logs
from lenet_jax.evaluation import restore_params
from lenet_jax.workdir import read_metrics

SCRIPT = Path(__file__).resolve().parent / "train.py"
TIMING_KEYS = ("train_seconds", "images_per_second", "eval_seconds")


def train_command(workdir: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(SCRIPT), "--workdir", str(workdir), "--preset", "smoke"]
    command += ["--epochs", "3", "--train-size", str(args.train_size), "--log-every", "10"]
    return command + (["--data-dir", args.data_dir] if args.data_dir else [])


def same_run(a: Path, b: Path) -> bool:
    leaves_a = jax.tree_util.tree_leaves(restore_params(a, 3).params)
    leaves_b = jax.tree_util.tree_leaves(restore_params(b, 3).params)
    params_equal = all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))

    def rows(workdir):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(workdir)]

    return params_equal and rows(a) == rows(b)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=3200, help="training images per epoch")
    parser.add_argument("--data-dir", help="MNIST IDX folder (default: $LENET_DATA_DIR or tfds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    quiet_library_logs()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))

    start = time.perf_counter()
    reference = root / "reference"
    # Kill anywhere between the first logged step and the end (start-up kills prove little).
    process = subprocess.Popen(train_command(reference, args), stdout=subprocess.PIPE, text=True)
    lines = (time.perf_counter() - start for line in process.stdout if line.startswith("step "))
    first_step = next(lines, 0.0)
    process.stdout.read()
    if process.wait():
        raise SystemExit(f"the reference run failed (exit {process.returncode})")
    duration = time.perf_counter() - start
    print(
        json.dumps(
            {
                "reference_seconds": round(duration, 2),
                "first_step_s": round(first_step, 2),
                "workdir": str(root),
            }
        ),
        flush=True,
    )

    failures = kills = 0
    for trial in range(args.trials):
        workdir = root / f"trial{trial}"
        kill_after = rng.uniform(first_step, 0.95 * duration)
        process = subprocess.Popen(
            train_command(workdir, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            process.wait(timeout=kill_after)
            killed = False  # finished before the kill time
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
            kills += 1
        epochs_at_kill = [row["epoch"] for row in read_metrics(workdir)] if workdir.exists() else []
        resumed = subprocess.run(train_command(workdir, args), capture_output=True, text=True)
        ok = resumed.returncode == 0 and same_run(reference, workdir)
        failures += not ok
        print(
            json.dumps(
                {
                    "trial": trial,
                    "kill_after_s": round(kill_after, 2),
                    "killed": killed,
                    "epochs_logged_at_kill": epochs_at_kill,
                    "resume_exit": resumed.returncode,
                    "bit_identical": ok,
                }
            ),
            flush=True,
        )
    print(json.dumps({"trials": args.trials, "killed": kills, "failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
