"""Evaluate a checkpoint on the test set: `python scripts/evaluate.py --workdir DIR [--epoch N]`.

Restores the parameters only, evaluates all 10,000 test images, and prints one JSON line with
`epoch`, `test_accuracy` and `test_total_loss` (equal to what training logged for that epoch).
A run trained with --ema-decay is evaluated with its averaged weights, as training did;
`--raw-weights` evaluates the raw ones (logged by training as raw_test_*).
"""

from __future__ import annotations

import json
import sys

from lenet_jax import cli, commands, speed
from lenet_jax.evaluation import evaluate_checkpoint


def main(argv: list[str]) -> int:
    speed.limit_malloc_arenas()  # before JAX starts its threads: peak RSS (the report's)
    speed.fix_mmap_threshold()
    parser = commands.parser(__doc__)
    commands.checkpoint_flags(parser)
    parser.add_argument(
        "--data-dir",
        help="folder with the MNIST-format IDX files (default: $LENET_DATA_DIR, "
        "else download through tensorflow-datasets)",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="also write report PNGs (curves, confusion matrix, mistakes, per-class scores, "
        "filters) and per_class.json into DIR, from the weights evaluated",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="WORKDIR",
        help="with --report: more workdirs whose training curves are overlaid",
    )
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="evaluate the raw weights of a run that kept a moving average (--ema-decay)",
    )
    parser.add_argument(
        "--speed",
        choices=speed.SPEEDS,
        default="auto",
        help="'plain': the model as written, no speed tricks (same numbers up to float rounding)",
    )
    args = parser.parse_args(argv)
    if args.compare and not args.report:
        raise cli.ConfigError("--compare only goes with --report")
    cli.quiet_library_logs()
    cli.enable_compilation_cache(args.speed)
    options = dict(averaged=not args.raw_weights, speed=args.speed, report=args.report, compare=args.compare)
    result = evaluate_checkpoint(args.workdir, args.epoch, args.data_dir, **options)
    files = result.pop("report", None)
    print(json.dumps(result))
    if files is not None:  # stderr: stdout stays the one JSON line
        written = f"Report for epoch {result['epoch']} written to {args.report}: {', '.join(files)}"
        print(written, file=sys.stderr)
    return 0


console = commands.console(main)  # the installed lenet-evaluate command
