"""Benchmarks: lenet-jax against PyTorch on the same machine, interleaved, one JSON line each.

    pip install -e ".[bench]"                       # PyTorch, for the peers
    python -m benchmarks speed --data-dir DIR       # the recipe: s/epoch, lenet-jax / PyTorch
    python -m benchmarks time-to-99 --data-dir DIR  # --preset fast against its PyTorch twin
    python -m benchmarks augmentation-cost --data-dir DIR
    python -m benchmarks robustness --workdir W     # accuracy on digits unlike MNIST's
    python -m benchmarks device-check --data-dir DIR  # what is open about a GPU (device_check.py)

(`python scripts/benchmark.py ...` is the same.) Contenders get an untimed warm-up, then alternate;
ratios are medians of per-round ratios, with min and max; PyTorch is compared at its faster thread
count. time-to-99: training seconds to 99% test accuracy from before the set-up (every seed compiles
unless --warm-cache), evaluation excluded, the twin evaluated at the same steps as lenet-jax; with
the first call's compile seconds and each side's ms per step after it (`--list-programs`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

from benchmarks import robustness
from lenet_jax import cli
from lenet_jax.config import AUGMENTATION_STRENGTHS, Config, field_types, get_preset
from lenet_jax.data import Dataset, load_dataset
from lenet_jax.errors import ConfigError
from lenet_jax.provenance import cpu_description
from lenet_jax.speed import SPEEDS
from lenet_jax.steps import evaluated_params
from lenet_jax.train import make_trainer, train_epoch


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def machine() -> dict[str, Any]:
    cpu, flags = cpu_description()
    features = {"avx512": "avx512f", "avx2": "avx2", "fma": "fma"}  # our name: /proc/cpuinfo's flag
    return {
        "cpu": cpu,
        **{name: flag in flags for name, flag in features.items()},
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def spread(values: list[float]) -> dict[str, float]:
    figures = {"median": statistics.median, "min": min, "max": max}
    return {name: round(f(values), 3) for name, f in figures.items()}


def ratios(times: list[float], peer_times: list[float]) -> dict[str, float]:
    """The spread of the per-round (or per-seed) ratios."""
    return spread([a / b for a, b in zip(times, peer_times, strict=True)])


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


class JaxEpochs:
    """lenet-jax's training loop, one epoch at a time."""

    def __init__(self, name: str, config: Config, dataset: Dataset):
        self.name, self.dataset = name, dataset
        self.trainer = make_trainer(config, dataset.train)
        self.state, self.epoch = self.trainer.new_state(), 0

    def train_epoch(self) -> float:
        self.epoch += 1
        step = (self.epoch - 1) * self.trainer.steps_per_epoch
        self.state, _, seconds = train_epoch(self.trainer, self.state, self.epoch, step)
        return seconds

    def evaluate(self) -> dict:
        return self.trainer.evaluator.evaluate(evaluated_params(self.state), self.dataset.test)


def interleave(contenders: list, rounds: int, images: int) -> dict[str, list[float]]:
    """One untimed warm-up epoch each, then `rounds` rounds of one timed epoch each, the order
    rotated every round. Returns name -> seconds per round."""
    for contender in contenders:
        emit({"warmup": contender.name, "seconds": round(contender.train_epoch(), 3)})
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for contender in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            seconds = contender.train_epoch()
            times[contender.name].append(seconds)
            rate = round(images / seconds)
            row = {"round": r, "seconds_per_epoch": round(seconds, 3), "images_per_second": rate}
            emit({"impl": contender.name, **row})
    return times


def speed(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.data_dir)
    config = get_preset("recipe").replace(speed=args.speed)
    contenders: list = [JaxEpochs("lenet-jax", config, dataset)]
    if args.jax_plain:
        contenders.append(JaxEpochs("lenet-jax-plain", config.replace(speed="plain"), dataset))
    if args.torch_threads:
        from benchmarks.torch_lenet import TorchTrainer  # PyTorch: imported only here

        arrays = (dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels)
        contenders += [TorchTrainer(*arrays, threads=threads) for threads in args.torch_threads]
    times = interleave(contenders, args.rounds, len(dataset.train))
    evals = {}
    for contender in contenders:
        contender.evaluate()  # warm-up
        result = contender.evaluate()
        evals[contender.name] = round(len(dataset.test) / result["seconds"])
        row = {"eval_images_per_second": evals[contender.name], "test_accuracy": result["accuracy"]}
        emit({"impl": contender.name, **row})
    peer = min((n for n in times if n.startswith("pytorch")), key=lambda n: statistics.median(times[n]))
    summary = {
        "summary": "recipe speed",
        "median_seconds_per_epoch": medians(times),
        "pytorch_compared": peer,
        "ratio_jax_to_pytorch": ratios(times["lenet-jax"], times[peer]),
        "speed": args.speed,
        "eval_images_per_second": evals,
        "rounds": args.rounds,
        **machine(),
    }
    for name in (n for n in times if n.startswith("lenet-jax-")):
        summary[f"ratio_{name}_to_pytorch"] = ratios(times[name], times[peer])
    emit(summary)


# jax.monitoring's events for the three stages of making a program (backend_compile: XLA's
# compilation, or the read of a cached program).
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


class FirstCallCompilation:
    """Seconds JAX spends tracing, lowering and compiling (or loading) programs until the
    training program's first call has run (`running` set), and every program made, by name."""

    def __init__(self):
        self.running, self.seconds, self.programs = False, self._zero(), {}
        self.first_call_seconds = 0.0  # set by the caller when the first call has run

    @staticmethod
    def _zero() -> dict[str, float]:
        return dict.fromkeys(COMPILE_EVENTS.values(), 0.0)

    def __call__(self, event: str, duration: float, fun_name: str = "?", **_) -> None:
        if event not in COMPILE_EVENTS:
            return
        if not self.running:
            self.seconds[COMPILE_EVENTS[event]] += duration
        name = re.sub(r"^jit\((.*)\)$|^jit_(.*)$", r"\1\2", fun_name)  # lowering says jit(<function>)
        row = self.programs.setdefault(name, {"before_first_call": not self.running, **self._zero()})
        row[COMPILE_EVENTS[event]] = round(row[COMPILE_EVENTS[event]] + duration, 3)

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *_):
        jax.monitoring.unregister_event_duration_listener(self)


def jax_time_to_accuracy(config: Config, dataset: Dataset, evals_per_epoch: int, target: float) -> dict:
    """Trains `config` through the public loop API until the test accuracy reaches `target`;
    seconds from before the set-up (compilation included), evaluation excluded."""
    start, row = time.perf_counter(), {}
    with FirstCallCompilation() as compilation:
        trainer = make_trainer(config, dataset.train)
        for row in _evaluations(trainer, dataset.test, evals_per_epoch, start, compilation):
            emit({"impl": "lenet-jax", "seed": config.seed, **row})
            if row["test_accuracy"] >= target:
                break
    first_call_seconds = compilation.first_call_seconds
    return {
        "reached": row.get("test_accuracy", 0) >= target,
        **row,
        "first_call_seconds": round(first_call_seconds, 3),
        "first_call_compilation_seconds": {k: round(v, 3) for k, v in compilation.seconds.items()},
        "programs": [{"program": name, **stages} for name, stages in compilation.programs.items()],
        "steps_per_call": trainer.steps_per_call,
        "ms_per_step": ms_per_step(row, first_call_seconds, trainer.steps_per_call),
    }


def _evaluations(trainer, test, evals_per_epoch: int, start: float, compilation: FirstCallCompilation):
    """A row at each evaluation point: after the call passing each `steps_per_epoch //
    evals_per_epoch` steps and at each epoch's end; train_seconds from `start`, evaluation excluded."""
    every, steps_per_epoch = max(1, trainer.steps_per_epoch // evals_per_epoch), trainer.steps_per_epoch
    state, step, evaluating = trainer.new_state(), 0, 0.0
    for epoch in range(1, trainer.config.epochs + 1):
        for indices, count in trainer.epoch_calls(epoch):
            first, step = step + 1, step + count
            state, _ = trainer.train_call(state, indices, count)
            if first == 1:  # the first call has run once its result is ready
                jax.block_until_ready(state)
                compilation.first_call_seconds, compilation.running = time.perf_counter() - start, True
            if step // every == (first - 1) // every and step % steps_per_epoch:
                continue  # no evaluation point in this call
            jax.block_until_ready(state)
            train_seconds = time.perf_counter() - start - evaluating
            began = time.perf_counter()
            accuracy = trainer.evaluator.evaluate(evaluated_params(state), test)["accuracy"]
            evaluating += time.perf_counter() - began
            yield {
                "epoch": round(step / steps_per_epoch, 3),
                "step": step,
                "train_seconds": round(train_seconds, 3),
                "test_accuracy": accuracy,
            }


def ms_per_step(row: dict, first_seconds: float, first_steps: int) -> float | None:
    """Milliseconds per training step after the first call (lenet-jax) or first step (the twin):
    the running speed, apart from what the start costs (set-up, compilation, warm-up)."""
    steps = row.get("step", 0) - first_steps
    return round(1000 * (row["train_seconds"] - first_seconds) / steps, 3) if steps > 0 else None


def time_to_99(args: argparse.Namespace) -> None:
    preset = preset_config(args).replace(speed=args.speed)
    full = load_dataset(args.data_dir)  # once: the twin picks its training split from it too
    dataset = full.subset(preset.validation_size, preset.train_size)
    data = (full.train.images, full.train.labels, full.test.images, full.test.labels)
    torch_ok = not args.no_torch and importlib.util.find_spec("torch") is not None
    twin_options = {"target": args.target, "evals_per_epoch": args.evals_per_epoch, "data": data}
    if args.warm_cache:
        warm_compilation_cache(preset, dataset, args)
    results: dict[str, list[dict]] = {"lenet-jax": []}
    for seed in args.seeds:
        config = preset.replace(seed=seed)
        jax.clear_caches()  # every seed compiles from scratch (or reads the disk cache: --warm-cache)
        jax_row = jax_time_to_accuracy(config, dataset, args.evals_per_epoch, args.target)
        programs = jax_row.pop("programs")
        for program in programs if args.list_programs else []:
            emit({"impl": "lenet-jax", "seed": seed, **program})
        results["lenet-jax"].append(jax_row)
        emit({"impl": "lenet-jax", "seed": seed, "result": jax_row})
        for threads in args.torch_threads if torch_ok else []:
            from benchmarks.torch_presets import time_to_accuracy  # PyTorch: imported only here

            label = {"impl": f"pytorch-twin-{threads}t", "seed": seed}
            twin = {**twin_options, "threads": threads, "steps_per_call": jax_row["steps_per_call"]}
            row = time_to_accuracy(config, seed, **twin, on_eval=lambda r, label=label: emit({**label, **r}))
            row["ms_per_step"] = ms_per_step(row, row["first_step_seconds"], 1)
            results.setdefault(label["impl"], []).append(row)
            emit({**label, "result": row})
    emit(time_to_99_summary(args, results, torch_ok))


def over_seeds(average: Callable, values: list[float | None]) -> float | None:
    """The average, rounded; None unless every seed has a value (not a figure over fewer seeds)."""
    return round(average(values), 3) if values and None not in values else None


def time_to_99_summary(args: argparse.Namespace, results: dict[str, list[dict]], torch_ok: bool) -> dict:
    def mean_seconds(rows: list[dict]) -> float | None:  # to the target
        return over_seeds(statistics.mean, [r["train_seconds"] if r["reached"] else None for r in rows])

    def median_ms(rows: list[dict]) -> float | None:
        return over_seeds(statistics.median, [r.get("ms_per_step") or None for r in rows])

    jax_rows = results["lenet-jax"]
    # The race in two parts: what starting costs lenet-jax (set-up, compilation: the first call
    # less its steps at the running speed), and the running speed of each contender.
    starts = [
        r["first_call_seconds"] - r["steps_per_call"] * r["ms_per_step"] / 1000
        if r.get("ms_per_step")
        else None
        for r in jax_rows
    ]
    compilation = [r["first_call_compilation_seconds"] for r in jax_rows]
    summary = {
        "summary": "time to 99%",
        "preset": args.preset,
        **({"overrides": args.set} if args.set else {}),
        "seeds": args.seeds,
        "epochs_reached": [row.get("epoch") if row["reached"] else None for row in jax_rows],
        "mean_train_seconds": {name: mean_seconds(rows) for name, rows in results.items()},
        "mean_first_call_seconds": over_seeds(statistics.mean, [r["first_call_seconds"] for r in jax_rows]),
        "mean_first_call_compilation_seconds": {
            stage: over_seeds(statistics.mean, [seconds[stage] for seconds in compilation])
            for stage in COMPILE_EVENTS.values()
        },
        "mean_start_seconds": over_seeds(statistics.mean, starts),
        "median_ms_per_step": {name: median_ms(rows) for name, rows in results.items()},
        "compilation_cache": "warm" if args.warm_cache else "cold",
        "speed": getattr(args, "speed", "auto"),
        "evals_per_epoch": args.evals_per_epoch,
        **machine(),
    }
    twins = [name for name in results if name.startswith("pytorch")]
    if twins and all(mean_seconds(results[name]) for name in [*twins, "lenet-jax"]):
        peer = min(twins, key=lambda name: mean_seconds(results[name]))
        summary["pytorch_compared"] = peer
        summary["ratio_jax_to_pytorch"] = round(mean_seconds(jax_rows) / mean_seconds(results[peer]), 3)
        seconds = [[row["train_seconds"] for row in rows] for rows in (jax_rows, results[peer])]
        summary["per_seed_ratio"] = ratios(*seconds)
        steps = summary["median_ms_per_step"]
        if steps["lenet-jax"] and steps[peer]:
            summary["ratio_ms_per_step"] = round(steps["lenet-jax"] / steps[peer], 3)
        summary["pytorch_epochs_reached"] = [row.get("epoch") for row in results[peer]]
    elif not torch_ok:
        summary["pytorch"] = "not run (PyTorch not installed, or --no-torch)"
    return summary


def warm_compilation_cache(config: Config, dataset: Dataset, args: argparse.Namespace) -> None:
    """Fills JAX's persistent compilation cache, in a fresh folder, with one short untimed run, so
    that every timed seed reads its programs from disk, as a second launch of scripts/train.py does."""
    os.environ[cli.CACHE_DIR_ENV] = tempfile.mkdtemp(prefix="lenet-jax-cache-")
    cli.enable_compilation_cache()
    jax_time_to_accuracy(config.replace(seed=args.seeds[0]), dataset, args.evals_per_epoch, target=0.0)


def augmentation_cost(args: argparse.Namespace) -> None:
    config = preset_config(args)
    dataset = load_dataset(args.data_dir, config.validation_size, config.train_size)
    plain = config.replace(**dict.fromkeys(AUGMENTATION_STRENGTHS, 0.0))
    contenders = [JaxEpochs("augmented", config, dataset), JaxEpochs("plain", plain, dataset)]
    times = interleave(contenders, args.rounds, len(dataset.train))
    extra = [a / b - 1 for a, b in zip(times["augmented"], times["plain"], strict=True)]
    row = {"summary": "augmentation cost", "preset": args.preset, "median_seconds_per_epoch": medians(times)}
    emit({**row, "extra_time_fraction": spread(extra), "rounds": args.rounds, **machine()})


def preset_config(args: argparse.Namespace) -> Config:
    """--preset with the --set FIELD=VALUE overrides, parsed and validated by the same flags as
    scripts/train.py's (lenet_jax.cli)."""
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
        raise ConfigError(f"--set {' '.join(args.set)}: {error}") from None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = cli.Parser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR"), help="MNIST IDX folder")
    common.add_argument("--torch-threads", type=int, nargs="*", default=[1, 2], help="PyTorch thread counts")
    common.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override preset fields")
    common.add_argument(
        "--speed", choices=SPEEDS, default="auto", help="lenet-jax's speed setting (plain: no speed tricks)"
    )
    run = commands.add_parser("speed", parents=[common], help="the recipe's s/epoch against PyTorch")
    run.add_argument("--rounds", type=int, default=5, help="timed epochs of each contender, alternating")
    run.add_argument("--jax-plain", action="store_true", help="also time lenet-jax with --speed plain")
    run = commands.add_parser("time-to-99", parents=[common], help="a preset against its PyTorch twin")
    run.add_argument("--preset", default="fast")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    run.add_argument("--evals-per-epoch", type=int, default=8)
    run.add_argument("--target", type=float, default=0.99)
    run.add_argument(
        "--warm-cache", action="store_true", help="read compiled programs from a warm disk cache"
    )
    run.add_argument("--no-torch", action="store_true", help="time lenet-jax only")
    run.add_argument(
        "--list-programs", action="store_true", help="a line per program compiled, seconds per stage"
    )
    run = commands.add_parser(
        "augmentation-cost", parents=[common], help="a preset with and without distortions"
    )
    run.add_argument("--preset", default="best")
    run.add_argument("--rounds", type=int, default=5)
    robustness.add_parser(commands)
    run = commands.add_parser("device-check", parents=[common], help="what is open about this backend")
    run.add_argument("--quick", action="store_true", help="every check in tiny form (the CPU rehearsal)")
    run.add_argument(
        "--checks", nargs="+", metavar="CHECK", help="only these checks (default: all, in order)"
    )
    run.add_argument("--out", help="also write the JSON lines (and runs.log) in this folder")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    cli.quiet_library_logs()
    from benchmarks import device_check  # here: it imports this module

    commands = {"speed": speed, "time-to-99": time_to_99, "augmentation-cost": augmentation_cost}
    commands |= {"robustness": robustness.robustness, "device-check": device_check.run}
    return commands[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
