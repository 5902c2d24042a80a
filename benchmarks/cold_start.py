"""What a cold `scripts/train.py` compiles, how long each program takes, and what options change.

    python -m benchmarks.cold_start --data-dir ../shared/data/mnist --repeats 3
    python -m benchmarks.cold_start --data-dir DIR --variants baseline rbg train-O1 --preset best

Each variant runs in a fresh process (nothing compiled yet, no persistent compilation cache),
`--repeats` times, interleaved (baseline, variant A, variant B, baseline, ...). A process builds
the programs of the training loop as lenet_jax.train builds them today (the same functions,
options and donation; the training program is the multi-step `train_on_indices` of
`lenet_jax.program.TrainProgram`, rebuilt here from the public pieces so that its options can
vary) and times, per
program, jit's trace+lower and XLA's compile separately (`jax.stages`: `.lower()`,
`.compile()`), then runs them: the step time (ms, median over calls of `steps_per_call` steps)
and the evaluation time of the test set. Every run prints one JSON line; then one summary line
per variant with the medians. Variants set the PRNG implementation (environment, before JAX
starts), compiler options of one program, or the program's structure; see VARIANTS.

    python -m benchmarks.cold_start --data-dir DIR --ab train-O1 --rounds 5
    python -m benchmarks.cold_start --data-dir DIR --list-programs --repeats 3

--ab: baseline and one variant in one process, alternating (compilations, then training calls):
CPU seconds of compilation and the median of the pairwise step-time ratios, the comparison that
survives a machine shared with other work. --list-programs: runs scripts/train.py itself with
JAX_LOG_COMPILES=1 and lists every program it compiles (cold, then with a fresh persistent cache:
cold and warm). Written against the code of this commit: the rebuilt programs must follow
lenet_jax.train when it changes. Findings: docs/performance-notes-cold-start.md.
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

# name -> what it changes: "env" (set before JAX is imported; --ab sets the PRNG in-process),
# "train" / "eval" / "init" (compiler options of that program, merged over lenet-jax's),
# "train_xla_defaults" (none of lenet-jax's training options), "no_cond" (the multi-step call
# without the lax.cond that skips padding steps), "config" (Config fields: another program for
# the same training), "concurrent" (all programs compiled at once, one thread each).
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "rbg": {"env": {"JAX_DEFAULT_PRNG_IMPL": "rbg"}},
    "unsafe_rbg": {"env": {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"}},
    "philox4x32": {"env": {"JAX_DEFAULT_PRNG_IMPL": "philox4x32"}},
    "philox2x32": {"env": {"JAX_DEFAULT_PRNG_IMPL": "philox2x32"}},
    "threefry-not-partitionable": {"env": {"JAX_THREEFRY_PARTITIONABLE": "0"}},
    "train-O1": {"train": {"xla_backend_optimization_level": 1}},
    "train-O2": {"train": {"xla_backend_optimization_level": 2}},
    "train-no-expensive-llvm": {"train": {"xla_llvm_disable_expensive_passes": True}},
    "train-no-fusion-emitters": {"train": {"xla_cpu_use_fusion_emitters": False}},
    "train-split-codegen": {"train": {"xla_cpu_parallel_codegen_split_count": 2}},
    "train-no-cond": {"no_cond": True},
    "concurrent-compile": {"concurrent": True},
    "train-xla-defaults": {"train_xla_defaults": True},
    "train-1-step-per-call": {"config": {"steps_per_call": 1}},
    "train-4-steps-per-call": {"config": {"steps_per_call": 4}},
    "conv-xla": {"config": {"conv_impl": "xla"}},
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


class Programs:
    """The training loop's programs for one preset, as lenet_jax builds them today, with a
    variant's changes: `build(spec)` -> {name: (jitted, lower args)}, plus what running them needs.

    init: steps.create_train_state (INIT_COMPILER_OPTIONS); train: TrainProgram's
    multi-step call (train_on_indices, or train_on_batches after the augment program when the
    preset augments); eval: Evaluator's step_on_indices (XLA's defaults).
    """

    def __init__(self, preset: str, data_dir: str):
        import jax.numpy as jnp
        import numpy as np

        from lenet_jax import speed as backend
        from lenet_jax.config import get_preset
        from lenet_jax.data import load_dataset, sequential_order
        from lenet_jax.evaluation import GROUP_IMAGES
        from lenet_jax.model import model_from_config
        from lenet_jax.optimizers import build_optimizer
        from lenet_jax.speed import resolve_conv_impl

        self.config = config = get_preset(preset)
        self.dataset, self.data_s, _ = _timed(load_dataset, data_dir)
        self.n = len(self.dataset.train)
        self.model = model_from_config(config)
        self.optimizer = build_optimizer(config, -(-self.n // config.batch_size))
        conv = resolve_conv_impl(config.conv_impl)
        self.per_call = config.steps_per_call or backend.default_steps_per_call(conv)
        self.images, self.labels = (
            jnp.asarray(self.dataset.train.images),
            jnp.asarray(self.dataset.train.labels),
        )
        self.test_images = jnp.asarray(self.dataset.test.images)
        self.test_labels = jnp.asarray(self.dataset.test.labels)
        groups = max(1, GROUP_IMAGES // config.eval_batch_size)
        order = sequential_order(len(self.dataset.test), config.eval_batch_size)
        padding = np.full((-len(order) % groups, config.eval_batch_size), -1, np.int32)
        self.test_order = np.concatenate([order, padding]).reshape(-1, groups, config.eval_batch_size)

    def build(self, spec: dict) -> dict:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from lenet_jax import host_random
        from lenet_jax import speed as backend
        from lenet_jax.augment import augmentation_from_config, make_augment
        from lenet_jax.data import gather_batch
        from lenet_jax.model import model_from_config
        from lenet_jax.program import scan_steps
        from lenet_jax.speed import resolve_conv_impl
        from lenet_jax.steps import (
            INIT_COMPILER_OPTIONS,
            augmentation_key,
            create_train_state,
            make_eval_step,
            make_train_step,
        )

        config, model, optimizer = self.config, self.model, self.optimizer
        if "config" in spec:  # another program for the same training (steps per call, convolutions)
            config = config.replace(**spec["config"])
            model = model_from_config(config)
        conv = resolve_conv_impl(config.conv_impl)
        self.per_call = config.steps_per_call or backend.default_steps_per_call(conv)
        prng = spec.get("env", {}).get("JAX_DEFAULT_PRNG_IMPL")
        previous = jax.config.jax_default_prng_impl
        if prng:  # in-process A/B: raw keys are read with the default impl at trace time
            jax.config.update("jax_default_prng_impl", prng)
        try:
            init_key = host_random.split(host_random.prng_key(config.seed))[0]  # as train.py
            init = create_train_state
            if "init" in spec:
                init = jax.jit(
                    create_train_state.__wrapped__,
                    static_argnums=(0, 1, 3),
                    compiler_options={**INIT_COMPILER_OPTIONS, **spec["init"]},
                )
            programs = {
                "init": (init, (model, optimizer, init_key, config.averages_weights)),
            }
            state = create_train_state.eval_shape(model, optimizer, init_key, config.averages_weights)
            train_step = make_train_step(
                model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
            )
            options = {**backend.training_compiler_options(), **spec.get("train", {})}
            if spec.get("train_xla_defaults"):
                options = {}
            jit = lambda fn, **kw: jax.jit(fn, compiler_options=options, **kw)  # noqa: E731
            steps = (
                (lambda f, s, xs, c: jax.lax.scan(lambda s, x: _loss_only(f(s, x)), s, xs))
                if spec.get("no_cond")
                else scan_steps
            )
            if self.per_call == 1:  # TrainProgram's one step per call: no loop

                def steps(f, s, xs, c):
                    s, loss = _loss_only(f(s, jax.tree_util.tree_map(lambda x: x[0], xs)))
                    return s, loss[None]

            self.init_args = (model, optimizer, init_key, config.averages_weights)
            indices = np.zeros((self.per_call, config.batch_size), np.int32)  # shape only
            count = np.int32(self.per_call)
            augment = make_augment(augmentation_from_config(config))
            if augment is None:

                def train_on_indices(state, images, labels, indices, count):
                    def step_on_indices(state, step_indices):
                        return train_step(state, gather_batch(images, labels, step_indices))

                    return steps(step_on_indices, state, indices, count)

                programs["train"] = (
                    jit(train_on_indices, donate_argnums=0),
                    (state, self.images, self.labels, indices, count),
                )
            else:

                def augmented_batches(state, images, labels, indices):
                    batches = jax.vmap(gather_batch, in_axes=(None, None, 0))(images, labels, indices)
                    keys = jax.vmap(lambda i: augmentation_key(state, i))(jnp.arange(len(indices)))
                    return {**batches, "image": jax.lax.map(lambda a: augment(*a), (keys, batches["image"]))}

                def train_on_batches(state, batches, count):
                    return steps(train_step, state, batches, count)

                augment_args = (state, self.images, self.labels, indices)
                batches = jax.eval_shape(augmented_batches, *augment_args)
                programs["augment"] = (jit(augmented_batches), augment_args)
                programs["train"] = (jit(train_on_batches, donate_argnums=0), (state, batches, count))
            eval_step = make_eval_step(model)

            def eval_on_indices(params, images, labels, indices):
                return eval_step(params, gather_batch(images, labels, indices))

            params = state.params
            programs["eval"] = (
                jax.jit(eval_on_indices, compiler_options=spec.get("eval") or None),
                (params, self.test_images, self.test_labels, self.test_order[0]),
            )
            # Lowered now, while the variant's PRNG implementation is in force.
            return {name: (_timed(fn.lower, *args), args) for name, (fn, args) in programs.items()}
        finally:
            jax.config.update("jax_default_prng_impl", previous)

    def run(self, compiled: dict, calls: int, evaluate: bool = True) -> dict:
        """Runs the compiled programs: init, then `calls` training calls; returns per-call
        (wall, cpu) seconds of the training calls (augment included) and other timings."""
        import jax
        import numpy as np

        from lenet_jax.data import _pad_to_batches

        init_args = compiled["init_args"]
        state = compiled["init"](init_args[2])
        # The epoch's order only decides which images each step reads, not how long it takes.
        permutation = np.random.default_rng(0).permutation(self.n).astype(np.int32)
        order = _pad_to_batches(permutation, self.config.batch_size)
        per_call = compiled["per_call"]
        calls = calls * 16 // per_call  # `calls` counts 16-step calls: the same steps for any per_call
        batches = range(0, len(order) - per_call + 1, per_call)
        count = np.int32(per_call)
        times = {"train": [], "train_cpu": [], "eval": []}
        for i, first in enumerate(batches[: calls + 1]):
            indices = order[first : first + per_call]
            start, cpu = time.perf_counter(), time.process_time()
            if "augment" in compiled:
                batches = compiled["augment"](state, self.images, self.labels, indices)
                state, losses = compiled["train"](state, batches, count)
            else:
                state, losses = compiled["train"](state, self.images, self.labels, indices, count)
            jax.block_until_ready(losses)
            if i:  # the first call is kept apart: first-run costs
                times["train"].append(time.perf_counter() - start)
                times["train_cpu"].append(time.process_time() - cpu)
            else:
                times["first_call"] = time.perf_counter() - start
        params = state.ema_params if state.ema_params is not None else state.params
        for _ in range(3 if evaluate else 0):
            start = time.perf_counter()
            jax.block_until_ready(
                [compiled["eval"](params, self.test_images, self.test_labels, g) for g in self.test_order]
            )
            times["eval"].append(time.perf_counter() - start)
        return times


def child(args: argparse.Namespace) -> dict:
    """One cold process: builds, compiles and runs the training loop's programs."""
    started = time.perf_counter()
    import jax

    record: dict = {"variant": args.child}
    setup = Programs(args.preset, args.data_dir)
    record["import_and_data_s"], record["data_s"] = time.perf_counter() - started, setup.data_s
    spec = VARIANTS[args.child]
    lowered = setup.build(spec)
    compiled = {}
    if spec.get("concurrent"):  # all programs compiled at once, one thread each
        from concurrent.futures import ThreadPoolExecutor

        start = time.perf_counter()
        with ThreadPoolExecutor(len(lowered)) as pool:
            futures = {name: pool.submit(low.compile) for name, ((low, _, _), _) in lowered.items()}
            compiled = {name: future.result() for name, future in futures.items()}
        record["compile_all_concurrently_s"] = time.perf_counter() - start
        lowered = {}  # nothing more to compile
    for name, ((low, lower_s, lower_cpu_s), _) in lowered.items():
        compiled[name], compile_s, compile_cpu_s = _timed(low.compile)
        record.update({f"{name}_lower_s": lower_s, f"{name}_lower_cpu_s": lower_cpu_s})
        record.update({f"{name}_compile_s": compile_s, f"{name}_compile_cpu_s": compile_cpu_s})
    compiled["init_args"] = setup.init_args
    compiled["per_call"] = setup.per_call
    times = setup.run(compiled, args.calls)
    record["train_first_call_s"] = times["first_call"]
    record["step_ms"] = 1000 * statistics.median(times["train"][2:]) / setup.per_call
    record["step_cpu_ms"] = 1000 * statistics.median(times["train_cpu"][2:]) / setup.per_call  # both threads
    record["steps_per_call"] = setup.per_call
    record["eval_test_set_s"] = statistics.median(times["eval"])
    record["compile_total_s"] = sum(v for k, v in record.items() if k.endswith("_compile_s"))
    record["compile_total_cpu_s"] = sum(v for k, v in record.items() if k.endswith("_compile_cpu_s"))
    record["process_s"] = time.perf_counter() - started
    record["prng"] = jax.config.jax_default_prng_impl
    record["threefry_partitionable"] = jax.config.jax_threefry_partitionable
    return record


def ab(args: argparse.Namespace) -> None:
    """In one process, baseline and a variant alternately: each program the variant changes is
    compiled `rounds` times each (A B A B ...), then their training calls alternate; prints one
    JSON line with the medians and the median of the pairwise ratios (variant / baseline)."""
    import jax

    spec = VARIANTS[args.ab]
    setup = Programs(args.preset, args.data_dir)
    changed = {"env": ["init", "augment", "train"], "init": ["init"], "eval": ["eval"]}
    names = sorted({n for key in spec for n in changed.get(key, ["train"])})
    compile_s = {v: {n: [] for n in names} for v in ("baseline", args.ab)}
    compiled = {}
    for _ in range(args.rounds):
        for variant in ("baseline", args.ab):
            jax.clear_caches()  # else a program lowered again is not compiled again
            lowered = setup.build(VARIANTS[variant])
            if variant not in compiled:  # the other programs, once, at the baseline's settings
                compiled[variant] = {
                    n: low.compile() for n, ((low, _, _), _) in lowered.items() if n not in names
                }
                compiled[variant]["init_args"] = lowered["init"][1]
                compiled[variant]["per_call"] = setup.per_call
            for name in names:
                if name in lowered:
                    compiled[variant][name], _, cpu = _timed(lowered[name][0][0].compile)
                    compile_s[variant][name].append(cpu)
    for variant in compiled:  # warm-up
        setup.run(compiled[variant], 2, evaluate=False)
    steps = {v: [] for v in compiled}
    for _ in range(args.rounds * 4):
        for variant in compiled:
            times = setup.run(compiled[variant], 4, evaluate=False)
            steps[variant].append(statistics.median(times["train"]) / compiled[variant]["per_call"])
    ratios = [b / a for a, b in zip(steps["baseline"], steps[args.ab], strict=True)]
    result = {
        "ab": args.ab,
        "preset": args.preset,
        "rounds": args.rounds,
        "compile_cpu_s": {
            v: {n: round(statistics.median(x), 3) for n, x in per.items() if x}
            for v, per in compile_s.items()
        },
        "step_ms": {v: round(1000 * statistics.median(x), 3) for v, x in steps.items()},
        "step_ratio_median": round(statistics.median(ratios), 3),
        "step_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "load": load_average(),
        "prng_after": jax.config.jax_default_prng_impl,
    }
    print(json.dumps(result), flush=True)


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
    parser.add_argument("--ab", choices=list(VARIANTS), help="instead: in-process A/B of one variant")
    parser.add_argument("--rounds", type=int, default=5, help="with --ab: compilations of each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ab:
        ab(args)
        return 0
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
    for variant, records in runs.items():
        keys = [k for k in records[0] if k.endswith(("_s", "_ms"))]
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
