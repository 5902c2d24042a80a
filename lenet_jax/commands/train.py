"""Train LeNet on MNIST: `python scripts/train.py [--preset NAME] [--FIELD VALUE ...]`."""

from __future__ import annotations

from pathlib import Path

from lenet_jax import cli, commands, parallel, speed
from lenet_jax.train import train_and_evaluate

DEFAULT_WORKDIR_ROOT = Path("checkpoints")


def main(argv: list[str]) -> int:
    speed.limit_malloc_arenas()  # before JAX, tfds and orbax start their threads: peak RSS
    parser = commands.parser(__doc__)
    parser.add_argument(
        "--workdir", help="checkpoints and logs; the same one resumes (default: checkpoints/<run-name>)"
    )
    parser.add_argument("--run-name", help="names the default workdir (default: the preset's name)")
    parser.add_argument(
        "--data-dir", help="the four MNIST IDX files' folder (default: $LENET_DATA_DIR, else download)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="start over, not resume (with checkpoints: needs --force too)"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --restart: replace the old run (back if the new one fails)"
    )
    group = parser.add_argument_group("multi-process (see README, Scaling out)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, help="how many processes take part")
    group.add_argument("--process-id", type=int, help="this process's rank, 0..N-1")
    group.add_argument(
        "--distributed", action="store_true", help="join a run jax.distributed detects (SLURM, MPI, ...)"
    )
    cli.add_config_flags(parser)
    args = parser.parse_args(argv)
    config = cli.config_from_args(args)
    if args.force and not args.restart:
        raise cli.ConfigError("--force only goes with --restart")
    explicit = any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
    if args.distributed and explicit:
        raise cli.ConfigError("--distributed takes no --coordinator, --num-processes or --process-id")
    if args.distributed or explicit:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    workdir = args.workdir or DEFAULT_WORKDIR_ROOT / (args.run_name or args.preset)
    cli.quiet_library_logs()
    cli.enable_compilation_cache(config.speed)
    if parallel.is_main_process():
        print(f"Workdir: {workdir}")
    result = train_and_evaluate(
        config, workdir, data_dir=args.data_dir, resume=not args.restart, replace=args.force
    )
    if parallel.is_main_process() and result.metrics:
        print(cli.run_summary(workdir, result.metrics))
    return 0


console = commands.console(main)  # the installed lenet-train command
