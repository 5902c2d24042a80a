#!/usr/bin/env python
"""Benchmark: the JAX trainer against a plain PyTorch reference, side by side, in one run.

    pip install -e ".[bench]"
    python scripts/benchmark.py --data-dir ../shared/data/mnist            # recipe, speed
    python scripts/benchmark.py --data-dir ../shared/data/mnist --time-to-99 --seeds 0 1 2

Speed: the recipe model and hyperparameters (batch 64, SGD 0.05) on all 60,000 training images.
After one untimed warm-up epoch each (compilation, caches), epochs alternate JAX, PyTorch, JAX,
PyTorch, ... so that both see the same machine conditions. Every measurement is one JSON line;
the summary line has the median seconds per epoch of each, their ratio, evaluation throughput,
the threads, backend and device. `--jax-conv` adds the JAX trainer with another convolution
implementation (e.g. `xla`) to the rotation, `--jax-xla-defaults` the JAX trainer compiled
without `lenet_jax.backend`'s training XLA options. Two subprocess runs measure what a user sees: peak
RSS and time from launch to the first training step of `scripts/train.py` (1 epoch), and peak
RSS of the PyTorch reference.

Time to 99%: `--time-to-99` trains `--preset fast` per seed through the training loop's epochs
(EpochRunner) and reports the training seconds (compilation included, evaluation excluded) until
the test accuracy first reaches 99.0%, evaluating `--evals-per-epoch` times per epoch (after the
training call that passes each interval's step: with 16 steps per call, steps 128, 240, ... for 8
per epoch; the rows give the step evaluated). Each seed
compiles from scratch; `--compilation-cache` reads compiled programs from the scripts' disk
cache instead (run it twice: the second run measures a warm cache).

`--torch-seeds 0` adds the PyTorch peer of the issue's reference (ReLU/max-pool LeNet with the
recipe's SGD 0.05, batch 64), timed the same way on the same machine.

Augmentation cost: `--augmentation-cost` times epochs of `--preset best` (or another) as it is
and with every augmentation strength set to 0, alternating, after a warm-up epoch each, and
reports the median seconds per epoch of both and the extra time augmentation costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from lenet_jax.reporting import read_metrics

from lenet_jax import backend, cli, parallel
from lenet_jax.config import AUGMENTATION_STRENGTHS, Config, field_types, get_preset
from lenet_jax.data import load_dataset
from lenet_jax.errors import ConfigError
from lenet_jax.evaluation import Evaluator
from lenet_jax.model import model_from_config, resolve_conv_impl
from lenet_jax.optimizers import build_optimizer
from lenet_jax.steps import create_train_state, evaluated_params
from lenet_jax.train import EpochRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ (the PyTorch reference) is not part of the package


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class JaxContender:
    """The JAX trainer exactly as train_and_evaluate runs it (EpochRunner + Evaluator)."""

    def __init__(self, config, dataset, name: str):
        self.name, self.config, self.dataset = name, config, dataset
        model = model_from_config(config)
        optimizer = build_optimizer(config, -(-len(dataset.train) // config.batch_size))
        init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
        self.runner = EpochRunner(model, optimizer, config, dataset.train, shuffle_key)
        # Placed as train_and_evaluate places it: a state with another sharding than the
        # step's outputs would make the first epoch compile the step twice.
        self.state = parallel.put_replicated(
            create_train_state(model, optimizer, init_key, config.averages_weights), self.runner.mesh
        )
        self.evaluator = Evaluator(model, config.eval_batch_size)
        self.epoch = 0

    def train_epoch(self) -> float:
        self.epoch += 1
        self.state, _, seconds = self.runner.run(self.state, self.epoch, step=0)
        return seconds

    def evaluate(self) -> dict:
        return self.evaluator.evaluate(self.state.params, self.dataset.test)


class TorchContender:
    def __init__(self, dataset, threads: int):
        import torch

        from benchmarks.torch_lenet import TorchTrainer

        torch.set_num_threads(threads)
        self.name = "pytorch"
        self.trainer = TorchTrainer(
            dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels
        )

    def train_epoch(self) -> float:
        return self.trainer.train_epoch()

    def evaluate(self) -> dict:
        return self.trainer.evaluate()


# Runs a script and prints its own peak RSS (VmHWM) at exit. Measured inside the process:
# a child's ru_maxrss inherits its parent's RSS across fork, so it would report ours.
RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK_RSS_KB", line.split()[1], file=sys.stderr, flush=True)
atexit.register(report)
sys.argv = sys.argv[1:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peak_rss_mb(command: list[str]) -> float:
    """Peak RSS in MB of `python <command>` run to completion (Linux)."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *command], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    kb = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return int(kb[-1]) / 1024


def alternate_epochs(contenders: list, epochs: int, images: int) -> dict[str, list[float]]:
    """One untimed warm-up epoch each (compilation, allocator and cache warm-up), then `epochs`
    timed epochs each, alternating A B A B so that all see the same machine conditions.
    Returns name -> seconds per epoch; prints one JSON line per measurement."""
    for contender in contenders:
        emit({"warmup": contender.name, "seconds": round(contender.train_epoch(), 3)})
    times = {c.name: [] for c in contenders}
    for rep in range(epochs):
        for contender in contenders:
            seconds = contender.train_epoch()
            times[contender.name].append(seconds)
            emit(
                {
                    "impl": contender.name,
                    "rep": rep,
                    "seconds_per_epoch": round(seconds, 3),
                    "images_per_second": round(images / seconds),
                }
            )
    return times


def speed(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.data_dir)
    config = get_preset("recipe")
    contenders = [JaxContender(config, dataset, f"jax-{resolve_conv_impl(config.conv_impl)}")]
    for impl in args.jax_conv:
        contenders.append(JaxContender(config.replace(conv_impl=impl), dataset, f"jax-{impl}"))
    if args.jax_xla_defaults:
        with backend.xla_defaults():
            contenders.append(JaxContender(config, dataset, f"{contenders[0].name}-xla-defaults"))
    contenders.append(TorchContender(dataset, args.torch_threads))
    times = alternate_epochs(contenders, args.epochs, len(dataset.train))
    evals = {}
    for contender in contenders:
        result = contender.evaluate()  # once to warm up, then measured
        result = contender.evaluate()
        evals[contender.name] = len(dataset.test) / result["seconds"]
        emit(
            {
                "impl": contender.name,
                "eval_images_per_second": round(evals[contender.name]),
                "test_accuracy": result["accuracy"],
            }
        )

    jax_name, torch_name = contenders[0].name, "pytorch"
    medians = {name: statistics.median(values) for name, values in times.items()}
    summary = {
        "summary": "recipe speed",
        "median_seconds_per_epoch": {k: round(v, 3) for k, v in medians.items()},
        "ratio_jax_to_pytorch": round(medians[jax_name] / medians[torch_name], 3),
        "eval_images_per_second": {k: round(v) for k, v in evals.items()},
        "epochs_each": args.epochs,
        "torch_threads": args.torch_threads,
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu": cpu_name(),
        "jax": jax.__version__,
    }
    for name in medians:
        if name.startswith("jax-") and name != jax_name:
            summary[f"ratio_{name}_to_pytorch"] = round(medians[name] / medians[torch_name], 3)
    if not args.skip_rss:
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp) / "run"
            train = [str(ROOT / "scripts" / "train.py"), "--epochs", "1", "--workdir", str(workdir)]
            rss = peak_rss_mb(train + data)
            first_step = read_metrics(workdir)[0]["seconds_to_first_step"]
        torch_rss = peak_rss_mb(["-m", "benchmarks.torch_lenet", "--threads", str(args.torch_threads), *data])
        summary.update(
            train_py_peak_rss_mb=round(rss),
            pytorch_peak_rss_mb=round(torch_rss),
            train_py_seconds_to_first_step=round(first_step, 2),
        )
    emit(summary)


def augmentation_cost(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.data_dir)
    config = preset_config(args)
    plain = config.replace(**dict.fromkeys(AUGMENTATION_STRENGTHS, 0.0))
    contenders = [JaxContender(config, dataset, "augmented"), JaxContender(plain, dataset, "plain")]
    times = alternate_epochs(contenders, args.epochs, len(dataset.train))
    medians = {name: statistics.median(values) for name, values in times.items()}
    emit(
        {
            "summary": "augmentation cost",
            "preset": args.preset,
            "median_seconds_per_epoch": {k: round(v, 3) for k, v in medians.items()},
            "extra_time_fraction": round(medians["augmented"] / medians["plain"] - 1, 3),
            "epochs_each": args.epochs,
            "backend": jax.default_backend(),
            "cpu": cpu_name(),
        }
    )


def torch_time_to_99(args: argparse.Namespace, seed: int) -> dict | None:
    """The PyTorch peer: ReLU/max-pool LeNet with the recipe's SGD (0.05, batch 64), evaluated
    after every epoch, until 99.0% or --torch-max-epochs; training seconds summed."""
    import torch

    from benchmarks.torch_lenet import TorchTrainer

    torch.set_num_threads(args.torch_threads)
    dataset = load_dataset(args.data_dir)
    trainer = TorchTrainer(
        dataset.train.images,
        dataset.train.labels,
        dataset.test.images,
        dataset.test.labels,
        seed=seed,
        activation="relu",
        pool="max",
    )
    elapsed = 0.0
    for epoch in range(1, args.torch_max_epochs + 1):
        elapsed += trainer.train_epoch()
        accuracy = trainer.evaluate()["accuracy"]
        emit(
            {
                "impl": "pytorch",
                "seed": seed,
                "epoch": epoch,
                "train_seconds": round(elapsed, 2),
                "test_accuracy": accuracy,
            }
        )
        if accuracy >= 0.99:
            return {"epoch": epoch, "train_seconds": round(elapsed, 2), "test_accuracy": accuracy}
    return None


class _Reached(Exception):
    """Raised by the evaluation probe when the test accuracy first reaches the target."""


def jax_time_to_99(args: argparse.Namespace, dataset, seed: int) -> dict | None:
    """Trains the preset through EpochRunner (the training loop's own epochs), evaluating the
    test set --evals-per-epoch times per epoch (the averaged weights when the preset keeps an
    average), until 99.0%. Training seconds count from the first step (compilation included)
    and exclude every evaluation."""
    config = preset_config(args).replace(seed=seed)
    contender = JaxContender(config, dataset, args.preset)
    steps_per_epoch = contender.runner.steps_per_epoch()
    every = max(1, steps_per_epoch // args.evals_per_epoch)
    clock = {"start": time.perf_counter(), "evaluating": 0.0}

    def evaluate(state, step: int) -> None:
        begin = time.perf_counter()
        train_seconds = begin - clock["start"] - clock["evaluating"]
        accuracy = contender.evaluator.evaluate(evaluated_params(state), dataset.test)["accuracy"]
        clock["evaluating"] += time.perf_counter() - begin
        row = {
            "epoch": round(step / steps_per_epoch, 3),
            "step": step,
            "train_seconds": round(train_seconds, 2),
            "test_accuracy": accuracy,
        }
        emit({"impl": "jax", "preset": args.preset, "seed": seed, **row})
        if accuracy >= 0.99:
            raise _Reached(row)

    step = 0
    try:
        for epoch in range(1, config.epochs + 1):
            contender.state, _, _ = contender.runner.run(
                contender.state, epoch, step, probe=(every, evaluate)
            )
            step += steps_per_epoch
            if step % every:  # the epoch's end was not probed
                evaluate(contender.state, step)
    except _Reached as reached:
        return reached.args[0]
    return None


def preset_config(args: argparse.Namespace) -> Config:
    """--preset with the --set FIELD=VALUE overrides applied, parsed and validated by the same
    flags as scripts/train.py's (lenet_jax.cli)."""
    parser = cli.Parser(prog="--set")
    cli.add_config_flags(parser)
    types = field_types()
    flags = ["--preset", args.preset]
    for item in args.set:
        name, _, text = item.partition("=")
        flag = cli.flag_name(name)
        if types.get(name) is bool:  # a switch: --name / --no-name
            flags.append(flag if text.lower() in ("1", "true", "yes") else "--no-" + flag[2:])
        else:
            flags += [flag, text]
    try:
        return cli.config_from_args(parser.parse_args(flags))
    except ConfigError as error:
        raise SystemExit(f"error: --set {' '.join(args.set)}: {error}") from None


def time_to_99(args: argparse.Namespace) -> None:
    preset = preset_config(args)
    dataset = load_dataset(args.data_dir, preset.validation_size, preset.train_size)
    results = []
    for seed in args.seeds:
        # Every seed compiles everything it runs, as a fresh process would (or, with
        # --compilation-cache, reads it from the disk cache, as a second launch would).
        jax.clear_caches()
        reached = jax_time_to_99(args, dataset, seed)
        emit({"preset": args.preset, "seed": seed, "reached_99": reached})
        results.append(reached)
    done = [r["train_seconds"] for r in results if r]
    summary = {
        "summary": "time to 99%",
        "preset": args.preset,
        **({"overrides": args.set} if args.set else {}),
        "seeds": args.seeds,
        "reached": len(done),
        "mean_train_seconds": round(statistics.mean(done), 2) if done else None,
        "evals_per_epoch": args.evals_per_epoch,
        "compilation_cache": args.compilation_cache,
        "backend": jax.default_backend(),
        "cpu": cpu_name(),
    }
    if args.torch_seeds:
        peer = [torch_time_to_99(args, seed) for seed in args.torch_seeds]
        peer_done = [r["train_seconds"] for r in peer if r]
        summary.update(
            pytorch_seeds=args.torch_seeds,
            pytorch_reached=len(peer_done),
            pytorch_epochs=[r and r["epoch"] for r in peer],
            pytorch_mean_train_seconds=round(statistics.mean(peer_done), 2) if peer_done else None,
        )
        if done and peer_done:
            summary["ratio_jax_to_pytorch"] = round(statistics.mean(done) / statistics.mean(peer_done), 3)
    emit(summary)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per implementation")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--jax-conv", nargs="*", default=[], help="extra JAX conv impls to time")
    parser.add_argument(
        "--jax-xla-defaults",
        action="store_true",
        help="also time the JAX trainer without lenet_jax.backend's compiler options",
    )
    parser.add_argument("--skip-rss", action="store_true", help="skip the subprocess RSS runs")
    parser.add_argument("--time-to-99", action="store_true")
    parser.add_argument(
        "--torch-seeds",
        type=int,
        nargs="*",
        default=[],
        help="with --time-to-99: also time the PyTorch peer (ReLU/max-pool, SGD 0.05) for these seeds",
    )
    parser.add_argument("--torch-max-epochs", type=int, default=20)
    parser.add_argument(
        "--evals-per-epoch",
        type=int,
        default=1,
        help="with --time-to-99: test evaluations per epoch (after the call passing each equal interval)",
    )
    parser.add_argument("--augmentation-cost", action="store_true")
    parser.add_argument(
        "--preset", help="preset of --time-to-99 (default fast) or --augmentation-cost (default best)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--compilation-cache",
        action="store_true",
        help="with --time-to-99: use the scripts' persistent compilation cache ($LENET_JAX_CACHE_DIR), "
        "as a second launch of scripts/train.py does (default: every seed compiles from scratch)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override fields of the preset (--time-to-99, --augmentation-cost), e.g. --set epochs=2",
    )
    args = parser.parse_args()
    cli.quiet_library_logs()
    if args.compilation_cache:
        cli.enable_compilation_cache()
    if args.time_to_99:
        args.preset = args.preset or "fast"
        time_to_99(args)
    elif args.augmentation_cost:
        args.preset = args.preset or "best"
        augmentation_cost(args)
    else:
        speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
