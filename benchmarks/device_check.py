"""device-check: what is open about a backend, one JSON line per check (docs/device-check.md).

Written for a GPU lent for minutes (scripts/device_check.sh is the call); it runs on any backend. A
failing check prints its error and the others still run; the summary ends with the backend's row
for lenet_jax.speed's table. --quick: every check tiny (512 images, XLA's optimizations off).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

import jax
import numpy as np

from benchmarks.__main__ import FirstCallCompilation
from lenet_jax import cli, idx, speed
from lenet_jax.config import get_preset
from lenet_jax.data import load_dataset, num_batches
from lenet_jax.errors import ConfigError
from lenet_jax.steps import evaluated_params
from lenet_jax.train import make_trainer, train_and_evaluate, train_epoch

SWEEP = (1, 16, 64, 256, "epoch")  # steps per call
DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
TIMING = {"train_seconds", "images_per_second", "eval_seconds"}


def tiny_mnist(data_dir: str, folder: Path, train: int = 512, test: int = 500) -> str:
    """The first images of each split of data_dir as an IDX folder: --quick's dataset."""
    dataset = load_dataset(data_dir)
    folder.mkdir()
    for split, count in (("train", train), ("test", test)):
        data, magics = getattr(dataset, split), (idx.IMAGES_MAGIC, idx.LABELS_MAGIC)
        arrays = (data.images[:count, ..., 0], data.labels[:count])
        for name, magic, array in zip(idx.SPLIT_FILES[split], magics, arrays, strict=True):
            header = np.asarray([magic, *array.shape], ">u4").tobytes()
            (folder / name).write_bytes(header + array.astype(np.uint8).tobytes())
    return str(folder)


def child(ctx, command: list[str], extra_env: dict | None = None) -> list[dict]:
    """The JSON lines a child process prints (its stderr joins ours: the log)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ctx.child_env, **(extra_env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[2:4])} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run_quietly(ctx, config, name: str):
    """train_and_evaluate in TMP/name, its console lines into OUT/runs.log, not among the JSON."""
    with open(ctx.out / "runs.log", "a") as log, contextlib.redirect_stdout(log):
        print(f"--- {name}: {json.dumps(config.to_dict())}", flush=True)
        return train_and_evaluate(config, ctx.tmp / name, data_dir=ctx.data_dir)


def env(ctx) -> dict:
    packages = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    plugin = ("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": packages.get("jaxlib"),
        "plugins": {name: v for name, v in packages.items() if name.lower().startswith(plugin)},
        "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "memory_limit_bytes": (jax.devices()[0].memory_stats() or {}).get("bytes_limit"),  # None: CPU
        "tensorboardx": "tensorboardX" in packages,
        "tensorflow_datasets": "tensorflow-datasets" in packages,
    }


def fast_1_epoch(ctx) -> dict:
    with FirstCallCompilation() as compilation:  # never `running`: all of the run's programs
        result = run_quietly(ctx, ctx.fast.replace(epochs=1), "fast")
    ctx.fast_state, row = result.state, result.metrics[-1]
    keep = ("train_seconds", "images_per_second", "test_accuracy", "test_total_loss")
    compile_seconds = round(compilation.seconds["compile"], 3)
    return {**{k: round(row[k], 4) for k in keep}, "compile_seconds": compile_seconds}


def ms_per_step(ctx, config, conv: str, steps_per_call: int) -> float:
    """Training ms per step over the second of two epochs (the first compiles and warms up)."""
    with mock.patch.dict(speed.defaults(), conv=conv):  # this backend's row names `conv` meanwhile
        trainer = make_trainer(config, ctx.dataset.train, steps_per_call=steps_per_call)
    steps = num_batches(len(ctx.dataset.train), config.batch_size)
    state, _, _ = train_epoch(trainer, trainer.new_state(), 1, 0)
    _, _, seconds = train_epoch(trainer, state, 2, steps)
    return round(1000 * seconds / steps, 4)


def steps_per_call(ctx) -> dict:
    """ms per step of each conv and steps per call (and of --speed plain); the conv fastest over
    the presets, then the fewest steps per call within 5% of its best (a shorter call stops and
    logs sooner)."""
    steps = num_batches(len(ctx.dataset.train), 64)  # both presets train at batch 64
    values = sorted({steps if n == "epoch" else min(n, steps) for n in SWEEP})  # tiny epochs: fewer
    table = {
        conv: {name: {n: ms_per_step(ctx, c, conv, n) for n in values} for name, c in ctx.swept}
        for conv in ctx.convs
    }
    totals = {conv: {n: sum(ms[n] for ms in t.values()) for n in values} for conv, t in table.items()}
    ctx.best_conv = min(totals, key=lambda conv: min(totals[conv].values()))
    best = totals[ctx.best_conv]
    ctx.best_steps = min(n for n in values if best[n] <= 1.05 * min(best.values()))
    plain = {name: ms_per_step(ctx, c.replace(speed="plain"), "xla", 1) for name, c in ctx.swept}
    row = {"ms_per_step": {**table, "plain": plain}, "steps_per_epoch": steps}
    return {**row, "conv": ctx.best_conv, "steps_per_call": ctx.best_steps}


def worker(data_dir: str, quick: bool) -> None:
    """One determinism run (a child process): 2 epochs of fast, the digest of what it ends with."""
    if quick:  # the cache the whole quick check shares: a smoke test, not a measurement
        cli.enable_compilation_cache()
    dataset = load_dataset(data_dir)
    config = get_preset("fast").replace(epochs=2)
    trainer = make_trainer(config, dataset.train)
    state, first, _ = train_epoch(trainer, trainer.new_state(), 1, 0)
    steps = num_batches(len(dataset.train), config.batch_size)
    state, second, seconds = train_epoch(trainer, state, 2, steps)
    digest = hashlib.sha256(np.asarray(np.concatenate([first, second]), np.float32).tobytes())
    for leaf in jax.tree_util.tree_leaves(evaluated_params(state)):
        digest.update(np.asarray(leaf).tobytes())
    print(json.dumps({"digest": digest.hexdigest()[:16], "epoch_2_seconds": round(seconds, 4)}), flush=True)


def determinism(ctx) -> dict:
    command = [sys.executable, "-m", "benchmarks.device_check", ctx.data_dir, *(["--quick"] * ctx.quick)]
    flags = os.environ.get("XLA_FLAGS", "")
    envs = [{"XLA_FLAGS": f"{flags} {extra}".strip()} for extra in ("", DETERMINISTIC) * 2]
    done = [child(ctx, command, extra_env)[-1] for extra_env in envs]  # one at a time: honest timings
    runs = {"default": done[0::2], "deterministic_ops": done[1::2]}
    seconds = {name: min(r["epoch_2_seconds"] for r in pair) for name, pair in runs.items()}
    return {
        "same_bits_twice": {name: pair[0]["digest"] == pair[1]["digest"] for name, pair in runs.items()},
        "same_bits_across_modes": runs["default"][0]["digest"] == runs["deterministic_ops"][0]["digest"],
        "epoch_seconds": seconds,
        "deterministic_ops_cost": round(seconds["deterministic_ops"] / seconds["default"] - 1, 3),
        **({} if jax.default_backend() == "gpu" else {"note": "an XLA:GPU flag: accepted, ignored here"}),
    }


def resume(ctx) -> dict:
    """fast at a constant learning rate (a schedule over the epochs forbids changing their number)."""
    config = ctx.fast.replace(schedule="constant", lr=0.05, epochs=2)
    whole = run_quietly(ctx, config, "whole")
    run_quietly(ctx, config.replace(epochs=1), "stopped")
    resumed = run_quietly(ctx, config, "stopped")
    pairs = zip(*(jax.tree_util.tree_leaves(r.state) for r in (whole, resumed)), strict=True)
    same_state = all(np.array_equal(a, b) for a, b in pairs)
    untimed = [
        [{k: v for k, v in row.items() if k not in TIMING} for row in r.metrics] for r in (whole, resumed)
    ]
    same_rows = untimed[0] == untimed[1]
    return {"identical": same_state and same_rows, "same_state": same_state, "same_rows": same_rows}


def evaluation(ctx) -> dict:
    if ctx.fast_state is None:
        raise RuntimeError("fast_1_epoch failed: no trained weights to evaluate")
    batch = 500 if ctx.quick else 10000
    evaluator = make_trainer(ctx.fast.replace(eval_batch_size=batch), ctx.dataset.train).evaluator
    params = evaluated_params(ctx.fast_state)
    evaluator.evaluate(params, ctx.dataset.test)  # compiles
    result = evaluator.evaluate(params, ctx.dataset.test)
    rate = round(result["count"] / result["seconds"])
    return {"batch": batch, "images_per_second": rate, "accuracy": result["accuracy"]}


def recipe_3_epochs(ctx) -> dict:
    rows = run_quietly(ctx, ctx.recipe.replace(epochs=3), "recipe").metrics
    accuracy = [row["test_accuracy"] for row in rows]
    # The plateau is chance level (~11%); on a CPU the recipe is at ~85% after epoch 3.
    seconds = [round(r["train_seconds"], 3) for r in rows]
    return {"test_accuracy": accuracy, "train_seconds": seconds, "left_plateau": accuracy[-1] > 0.5}


def time_to_99(ctx) -> dict:
    """`python -m benchmarks time-to-99` of fast (no PyTorch) without a compilation cache and with
    a warm one (--warm-cache), a process each."""
    command = [sys.executable, "-m", "benchmarks", "time-to-99", "--preset", "fast", "--no-torch"]
    sizes = ["--seeds", "0", "--set", "epochs=1"] if ctx.quick else ["--seeds", "0", "1", "2"]
    command += ["--data-dir", ctx.data_dir, *sizes]
    runs = {"cold": child(ctx, command), "warm": child(ctx, [*command, "--warm-cache"])}
    return {cache: seeds_and_summary(lines) for cache, lines in runs.items()}


def seeds_and_summary(lines: list[dict]) -> dict:
    summary, seeds = lines[-1], [line["result"] for line in lines if "result" in line]
    return {
        "time_to_99_seconds": summary["mean_train_seconds"]["lenet-jax"],  # None if a seed missed 99%
        "per_seed_seconds": [row["train_seconds"] if row["reached"] else None for row in seeds],
        **{k: v for k, v in summary.items() if k.startswith(("epochs_", "mean_first"))},
    }


CHECKS = {  # in the order they run
    "env": env, "fast_1_epoch": fast_1_epoch, "steps_per_call": steps_per_call, "determinism": determinism,
    "resume": resume, "eval": evaluation, "recipe_3_epochs": recipe_3_epochs, "time_to_99": time_to_99,
}  # fmt: skip


class Context:
    """What the checks share: the data, the presets, where to write, what earlier checks found."""

    def __init__(self, args, tmp: Path):
        self.quick, self.tmp, self.out = args.quick, tmp, Path(args.out or tmp)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_dir = tiny_mnist(args.data_dir, tmp / "mnist") if args.quick else args.data_dir
        self.child_env = {}
        if args.quick:  # one compilation cache for the check and its processes (the tests' if set)
            os.environ.setdefault(cli.CACHE_DIR_ENV, str(tmp / "xla"))
            cli.enable_compilation_cache()
            # Compiling dominates a tiny run: XLA's optimizations off halves it.
            jax.config.update("jax_disable_most_optimizations", True)
            self.child_env = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
        self.dataset = load_dataset(self.data_dir)
        self.fast, self.recipe = get_preset("fast"), get_preset("recipe")
        # --quick: fast alone, with this backend's conv alone
        self.swept = [("fast", self.fast)] if args.quick else [("recipe", self.recipe), ("fast", self.fast)]
        self.convs = [speed.defaults()["conv"]] if args.quick else ["xla", "toeplitz"]
        self.fast_state, self.best_steps, self.best_conv = None, None, None


def run(args) -> int:
    """The checks in order, one JSON line each (also OUT/device-check.jsonl), then the summary."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts a backend
    if unknown := sorted(set(args.checks or ()) - set(CHECKS)):
        raise ConfigError(f"--checks {' '.join(unknown)}: no such check (the checks: {', '.join(CHECKS)})")
    chosen = [name for name in CHECKS if not args.checks or name in ("env", *args.checks)]
    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="lenet-device-check-") as tmp, contextlib.ExitStack() as undo:
        flag = "jax_disable_most_optimizations"  # --quick sets it in this process: undone at the end
        undo.callback(jax.config.update, flag, jax.config.read(flag))
        ctx = Context(args, Path(tmp))
        with open(ctx.out / "device-check.jsonl", "w") as lines:

            def emit(record: dict) -> None:
                for stream in (sys.stdout, lines):  # flushed: a run cut off by the time limit keeps them
                    print(json.dumps(record), file=stream, flush=True)

            for name in chosen:
                began, cpu = time.perf_counter(), cpu_seconds()
                try:
                    results[name] = CHECKS[name](ctx)
                except Exception as error:  # noqa: BLE001 - a borrowed GPU's minutes: run the others
                    traceback.print_exc()  # to stderr, the log beside the JSON lines
                    results[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                took = {"seconds": time.perf_counter() - began, "cpu_seconds": cpu_seconds() - cpu}
                emit({"check": name, **results[name], **{k: round(v, 2) for k, v in took.items()}})
            emit(summary(ctx, results, start))
    return 1 if any("error" in r for r in results.values()) else 0


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (wall time misleads on a busy host)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def summary(ctx, results: dict, start: float) -> dict:
    """The figures of the checks that ran (None for one that did not run or failed)."""

    def figure(check: str, key: str | None = None):
        result = results.get(check, {"error": "not run"})
        return None if "error" in result else result.get(key) if key else result

    to_99 = figure("time_to_99")
    measured = f"{datetime.date.today()} {jax.devices()[0].device_kind}"
    return {
        "summary": "device check",
        **{k: results["env"].get(k) for k in ("backend", "device_kind", "devices", "jax")},
        "fast_1_epoch": figure("fast_1_epoch"),
        "time_to_99_seconds": {c: r["time_to_99_seconds"] for c, r in to_99.items()} if to_99 else None,
        "deterministic": figure("determinism", "same_bits_twice"),
        "resume_identical": figure("resume", "identical"),
        "eval_images_per_second": figure("eval", "images_per_second"),
        "recipe_left_plateau": figure("recipe_3_epochs", "left_plateau"),
        "peak_memory_bytes": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"),
        "failed": [name for name, r in results.items() if "error" in r],
        "speed_table_row": {
            "conv": ctx.best_conv,
            "steps_per_call": ctx.best_steps,
            "measured": measured + (" (--quick: not a measurement)" if ctx.quick else ""),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }


if __name__ == "__main__":  # a determinism run: python -m benchmarks.device_check DATA_DIR [--quick]
    worker(sys.argv[1], "--quick" in sys.argv[2:])
