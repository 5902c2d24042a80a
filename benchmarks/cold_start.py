"""What a cold `scripts/train.py` compiles, how long each program takes, and what options change.

    python -m benchmarks.cold_start --data-dir ../shared/data/mnist --repeats 3
    python -m benchmarks.cold_start --data-dir DIR --variants baseline rbg train-O1 --preset best

Each variant runs in a fresh process (nothing compiled yet, no persistent compilation cache),
`--repeats` times, interleaved (baseline, variant A, variant B, baseline, ...). A process builds
the programs of the training loop as lenet_jax.train builds them today (the same functions,
options and donation; the training program is the multi-step `train_on_indices` of
`EpochRunner`, rebuilt here from the public pieces so that its options can vary) and times, per
program, jit's trace+lower and XLA's compile separately (`jax.stages`: `.lower()`,
`.compile()`), then runs them: the step time (ms, median over calls of `steps_per_call` steps)
and the evaluation time of the test set. Every run prints one JSON line; then one summary line
per variant with the medians. Variants set the PRNG implementation (environment, before JAX
starts) or compiler options of one program; see VARIANTS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> what it changes: "env" (set before JAX is imported), "train" / "eval" / "init"
# (compiler options of that program, merged over the ones lenet-jax uses), "no_cond" (the
# multi-step call without the lax.cond that skips padding steps).
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "rbg": {"env": {"JAX_DEFAULT_PRNG_IMPL": "rbg"}},
    "unsafe_rbg": {"env": {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"}},
    "threefry-not-partitionable": {"env": {"JAX_THREEFRY_PARTITIONABLE": "0"}},
    "train-O1": {"train": {"xla_backend_optimization_level": 1}},
    "train-O2": {"train": {"xla_backend_optimization_level": 2}},
    "train-no-expensive-llvm": {"train": {"xla_llvm_disable_expensive_passes": True}},
    "train-no-fusion-emitters": {"train": {"xla_cpu_use_fusion_emitters": False}},
    "train-split-codegen": {"train": {"xla_cpu_parallel_codegen_split_count": 2}},
    "train-no-cond": {"no_cond": True},
    "eval-O1": {"eval": {"xla_backend_optimization_level": 1}},
    "eval-no-expensive-llvm": {"eval": {"xla_llvm_disable_expensive_passes": True}},
    "eval-no-ynn": {"eval": {"xla_cpu_experimental_ynn_fusion_type": ""}},
    "init-no-expensive-llvm": {"init": {"xla_llvm_disable_expensive_passes": True}},
}


def _timed(fn, *args):
    """fn(*args), its wall seconds and its CPU seconds (all threads of this process: robust to
    other processes competing for the cores, where the wall time is not)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - start, time.process_time() - cpu


def child(args: argparse.Namespace) -> dict:
    """One cold process: builds, compiles and runs the training loop's programs."""
    spec = VARIANTS[args.child]
    started = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lenet_jax import backend
    from lenet_jax.config import get_preset
    from lenet_jax.data import _permutation, epoch_order, gather_batch, load_dataset, sequential_order
    from lenet_jax.evaluation import GROUP_IMAGES
    from lenet_jax.model import model_from_config, resolve_conv_impl
    from lenet_jax.optimizers import build_optimizer
    from lenet_jax.steps import create_train_state, make_eval_step, make_train_step, scan_steps

    record: dict = {"variant": args.child, "import_s": time.perf_counter() - started}
    config = get_preset(args.preset)
    dataset, record["data_s"], _ = _timed(load_dataset, args.data_dir)
    n, batch = len(dataset.train), config.batch_size
    steps_per_epoch = -(-n // batch)
    model = model_from_config(config)
    optimizer = build_optimizer(config, steps_per_epoch)
    key = jax.random.PRNGKey(config.seed)
    init_key, shuffle_key = jax.random.split(key)

    def lower_compile(name, jitted, *call_args):
        lowered, record[f"{name}_lower_s"], record[f"{name}_lower_cpu_s"] = _timed(jitted.lower, *call_args)
        compiled, record[f"{name}_compile_s"], record[f"{name}_compile_cpu_s"] = _timed(lowered.compile)
        return compiled

    # Initialisation: lenet_jax.steps.create_train_state (compiled at O0), or with extra options.
    init_fn = create_train_state
    if "init" in spec:
        init_fn = jax.jit(
            create_train_state.__wrapped__,
            static_argnums=(0, 1, 3),
            compiler_options={"xla_backend_optimization_level": 0, **spec["init"]},
        )
    init = lower_compile("init", init_fn, model, optimizer, init_key, config.averages_weights)
    state = init(init_key)
    jax.block_until_ready(state)
    perm = lower_compile("permutation", _permutation, shuffle_key, 1, n)
    jax.block_until_ready(perm(shuffle_key, 1))

    # The training program: EpochRunner's train_on_indices (one device, no augmentation).
    per_call = config.steps_per_call or backend.default_steps_per_call(resolve_conv_impl(config.conv_impl))
    train_step = make_train_step(
        model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
    )
    options = {**backend.training_compiler_options(), **spec.get("train", {})}

    def train_on_indices(state, images, labels, indices, count):
        def step_on_indices(state, step_indices):
            return train_step(state, gather_batch(images, labels, step_indices))

        if spec.get("no_cond"):
            return jax.lax.scan(lambda s, i: _loss_only(step_on_indices(s, i)), state, indices)
        return scan_steps(step_on_indices, state, indices, count)

    train = jax.jit(train_on_indices, donate_argnums=0, compiler_options=options)
    images, labels = jnp.asarray(dataset.train.images), jnp.asarray(dataset.train.labels)
    order = epoch_order(shuffle_key, 1, n, batch)
    calls = [order[i : i + per_call] for i in range(0, len(order) - per_call + 1, per_call)]
    count = np.int32(per_call)
    train = lower_compile("train", train, state, images, labels, calls[0], count)
    start = time.perf_counter()
    state, losses = train(state, images, labels, calls[0], count)
    jax.block_until_ready(losses)
    record["train_first_call_s"] = time.perf_counter() - start
    timings, cpu_timings = [], []
    for indices in calls[1 : 1 + args.calls]:
        start, cpu = time.perf_counter(), time.process_time()
        state, losses = train(state, images, labels, indices, count)
        jax.block_until_ready(losses)
        timings.append(time.perf_counter() - start)
        cpu_timings.append(time.process_time() - cpu)
    record["step_ms"] = 1000 * statistics.median(timings[2:]) / per_call
    record["step_cpu_ms"] = 1000 * statistics.median(cpu_timings[2:]) / per_call  # both threads
    record["steps_per_call"] = per_call

    # The evaluation program: lenet_jax.evaluation.Evaluator's step_on_indices, XLA's defaults.
    eval_step = make_eval_step(model)
    groups = max(1, GROUP_IMAGES // config.eval_batch_size)

    def eval_on_indices(params, images, labels, indices):
        return eval_step(params, gather_batch(images, labels, indices))

    evaluate = jax.jit(eval_on_indices, compiler_options=spec.get("eval") or None)
    test_images, test_labels = jnp.asarray(dataset.test.images), jnp.asarray(dataset.test.labels)
    test_order = sequential_order(len(dataset.test), config.eval_batch_size)
    padding = -len(test_order) % groups
    test_order = np.concatenate([test_order, np.full((padding, config.eval_batch_size), -1, np.int32)])
    test_order = test_order.reshape(-1, groups, config.eval_batch_size)
    params = state.ema_params if state.ema_params is not None else state.params
    evaluate = lower_compile("eval", evaluate, params, test_images, test_labels, test_order[0])
    eval_times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready([evaluate(params, test_images, test_labels, g) for g in test_order])
        eval_times.append(time.perf_counter() - start)
    record["eval_test_set_s"] = statistics.median(eval_times)
    record["compile_total_s"] = sum(v for k, v in record.items() if k.endswith("_compile_s"))
    record["compile_total_cpu_s"] = sum(v for k, v in record.items() if k.endswith("_compile_cpu_s"))
    record["process_s"] = time.perf_counter() - started
    record["prng"] = jax.config.jax_default_prng_impl
    record["threefry_partitionable"] = jax.config.jax_threefry_partitionable
    return record


def _loss_only(out):
    state, metrics = out
    return state, metrics["loss"].astype("float32")


def run_child(variant: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **VARIANTS[variant].get("env", {}), "LENET_JAX_CACHE_DIR": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.cold_start", "--child", variant, "--preset", args.preset]
    command += ["--data-dir", args.data_dir, "--calls", str(args.calls)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


LOG_PATTERNS = {
    "trace_s": re.compile(r"Finished tracing (?:\+ transforming )?(\S+) for \S+ in ([0-9.e-]+) sec"),
    "mlir_s": re.compile(r"Finished jaxpr to MLIR module conversion jit\((\S+)\) in ([0-9.e-]+) sec"),
    "compile_s": re.compile(r"Finished XLA compilation of jit\((\S+)\) in ([0-9.e-]+) sec"),
}


def list_programs(args: argparse.Namespace, cache_dir: str = "", prng: str | None = None) -> dict:
    """Runs `scripts/train.py --epochs 1` with JAX_LOG_COMPILES=1 and returns every program it
    compiled, in order, with its tracing, MLIR conversion and XLA compilation seconds, and the
    run's seconds_to_first_step (metrics.jsonl)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "JAX_LOG_COMPILES": "1", "LENET_JAX_CACHE_DIR": cache_dir}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if prng:
            env["JAX_DEFAULT_PRNG_IMPL"] = prng
        command = [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--preset",
            args.preset,
            "--epochs",
            "1",
        ]
        command += ["--workdir", str(Path(tmp) / "run"), "--data-dir", args.data_dir]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"train.py failed: {done.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
    programs: list[dict] = []
    for line in done.stderr.splitlines():
        for key, pattern in LOG_PATTERNS.items():
            match = pattern.search(line)
            if match:
                name, seconds = [g for g in match.groups() if g is not None]
                if key == "trace_s" or not programs or programs[-1]["program"] != name or key in programs[-1]:
                    programs.append({"program": name})
                programs[-1][key] = float(seconds)
    return {
        "programs": programs,
        "seconds_to_first_step": metrics["seconds_to_first_step"],
        "train_seconds": metrics["train_seconds"],
        "eval_seconds": metrics["eval_seconds"],
        "process_wall_s": wall,
    }


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR"))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=12, help="timed training calls per process")
    parser.add_argument(
        "--list-programs",
        action="store_true",
        help="instead: run scripts/train.py --epochs 1 (--repeats times, cold, then twice with a "
        "fresh persistent cache: cold and warm) and list every program it compiled",
    )
    parser.add_argument("--prng", help="with --list-programs: JAX_DEFAULT_PRNG_IMPL for the runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    if args.list_programs:
        runs = [("cold", "")] * args.repeats
        with tempfile.TemporaryDirectory() as cache:
            for kind, cache_dir in [*runs, ("cache-cold", cache), ("cache-warm", cache)]:
                result = list_programs(args, cache_dir, args.prng)
                for program in result.pop("programs"):
                    print(json.dumps({"run": kind, **program}), flush=True)
                print(json.dumps({"run": kind, "prng": args.prng or "default", **result}), flush=True)
        return 0
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            before = load_average()
            record = run_child(variant, args)
            record.update(repeat=repeat, load_before=before, load_after=load_average())
            runs[variant].append(record)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}),
                flush=True,
            )
    keys = [k for k in runs[args.variants[0]][0] if k.endswith(("_s", "_ms"))]
    for variant, records in runs.items():
        summary = {
            "summary": "cold start",
            "variant": variant,
            "preset": args.preset,
            "repeats": len(records),
        }
        summary.update({k: round(statistics.median(r[k] for r in records), 3) for k in keys})
        summary["load_before"] = [r["load_before"] for r in records]
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
