#!/usr/bin/env python
"""Summarise finished training runs (e.g. one preset over several seeds) as JSON lines.

    python scripts/results.py checkpoints/best-s0 checkpoints/best-s1 checkpoints/best-s2

One line per run (seed, epochs, final test error, training and evaluation seconds) and a summary
line: mean and sample standard deviation of the final epoch's test error over the runs. The
final epoch is reported, never the best one: picking the best epoch by its test accuracy would
use the test set to choose. This is how the README's results table is computed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from lenet_jax import cli
from lenet_jax.run_log import read_rows, read_run_config


def summarize(workdirs: list[str]) -> list[dict]:
    """The per-run rows and the summary row (last), from each workdir's metrics.jsonl (or, where
    it is damaged or missing, its checkpoints)."""
    rows = []
    for workdir in workdirs:
        metrics = read_rows(workdir, note=lambda line: print(line, file=sys.stderr))
        config = read_run_config(workdir)
        last = metrics[-1]
        rows.append(
            {
                "workdir": str(workdir),
                "seed": config["seed"],
                "epochs": last["epoch"],
                "test_error_percent": round(100 * (1 - last["test_accuracy"]), 2),
                "raw_weights_test_error_percent": (
                    round(100 * (1 - last["raw_test_accuracy"]), 2) if "raw_test_accuracy" in last else None
                ),
                "train_minutes": round(sum(r.get("train_seconds", 0) for r in metrics) / 60, 2),
                "eval_minutes": round(sum(r.get("eval_seconds", 0) for r in metrics) / 60, 2),
            }
        )
    errors = [r["test_error_percent"] for r in rows]
    summary = {
        "summary": "final-epoch test error",
        "runs": len(rows),
        "seeds": [r["seed"] for r in rows],
        "test_error_percent_mean": round(statistics.mean(errors), 3),
        "test_error_percent_std": round(statistics.stdev(errors), 3) if len(errors) > 1 else None,
        "train_minutes_mean": round(statistics.mean(r["train_minutes"] for r in rows), 2),
    }
    return [*rows, summary]


def main(argv: list[str]) -> int:
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="workdirs of finished training runs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    for row in summarize(args.workdirs):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
