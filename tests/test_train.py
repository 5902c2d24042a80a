"""End to end: the Python API on synthetic data, and the real scripts on real MNIST."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO_ROOT

from lenet_jax import reporting
from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import ConfigError
from lenet_jax.train import train_and_evaluate

TINY = Config(epochs=2, batch_size=16, eval_batch_size=16, log_every=2, init="flax")


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_python_api_takes_any_optax_optimizer(idx_dir, tmp_path):
    result = train_and_evaluate(TINY, tmp_path / "run", optimizer=optax.adam(1e-3), data_dir=idx_dir)
    assert [row["epoch"] for row in result.metrics] == [1, 2]
    assert result.metrics[-1]["step"] == 2 * 6  # 96 images / 16 per batch
    assert result.metrics[-1]["learning_rate"] is None  # plain optax.adam injects none
    assert Checkpoints(tmp_path / "run").epochs() == [1, 2]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert Config.from_dict(saved) == TINY
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]


def test_resume_continues_bit_identically(idx_dir, tmp_path):
    straight = train_and_evaluate(TINY.replace(epochs=3), tmp_path / "a", data_dir=idx_dir)
    train_and_evaluate(TINY.replace(epochs=1), tmp_path / "b", data_dir=idx_dir)
    resumed = train_and_evaluate(TINY.replace(epochs=3), tmp_path / "b", data_dir=idx_dir)
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    strip = [
        {k: v for k, v in row.items() if "seconds" not in k and "per_second" not in k}
        for row in straight.metrics
    ]
    assert strip == [
        {k: v for k, v in row.items() if "seconds" not in k and "per_second" not in k}
        for row in resumed.metrics
    ]
    # A finished run resumed again trains nothing and keeps its metrics.
    again = train_and_evaluate(TINY.replace(epochs=3), tmp_path / "b", data_dir=idx_dir)
    assert [row["epoch"] for row in again.metrics] == [1, 2, 3]


def test_resume_with_a_different_model_is_refused(idx_dir, tmp_path):
    train_and_evaluate(TINY.replace(epochs=1), tmp_path / "run", data_dir=idx_dir)
    with pytest.raises(ConfigError, match="activation: checkpoint 'sigmoid', now 'relu'"):
        train_and_evaluate(TINY.replace(activation="relu"), tmp_path / "run", data_dir=idx_dir)


def test_same_seed_same_params_other_seed_differs(idx_dir, tmp_path):
    one = TINY.replace(epochs=1)
    a = train_and_evaluate(one, tmp_path / "a", data_dir=idx_dir).state
    b = train_and_evaluate(one, tmp_path / "b", data_dir=idx_dir).state
    c = train_and_evaluate(one.replace(seed=1), tmp_path / "c", data_dir=idx_dir).state
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a.params), leaves(b.params), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a.params), leaves(c.params), strict=True))


def run_script(name, *args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.mark.e2e
def test_train_and_evaluate_scripts_on_real_mnist(mnist_dir, tmp_path):
    # A relative workdir, resolved against the working directory.
    done = run_script(
        "train.py",
        "--preset",
        "smoke",
        "--workdir",
        "run",
        "--data-dir",
        mnist_dir,
        "--log-every",
        "10",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "train 2,048 images, test 10,000 images" in done.stdout
    assert "step 10: train loss" in done.stdout
    workdir = tmp_path / "run"
    rows = reporting.read_metrics(workdir)
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in (
        "test_accuracy",
        "test_total_loss",
        "train_loss",
        "train_seconds",
        "images_per_second",
        "learning_rate",
    ):
        assert key in rows[0]
    scalars = read_scalars(workdir / "tensorboard")
    assert [s for s, _ in scalars[reporting.TAG_TRAIN_LOSS]] == [10, 20, 30, 40, 50, 60]
    assert [s for s, _ in scalars[reporting.TAG_ACCURACY]] == [1, 2]
    assert len(scalars[reporting.TAG_TEST_TOTAL_LOSS]) == 2
    for row in rows:
        out = run_script(
            "evaluate.py", "--workdir", workdir, "--epoch", row["epoch"], "--data-dir", mnist_dir
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["epoch"] == row["epoch"] and result["count"] == 10_000
        assert result["test_accuracy"] == row["test_accuracy"]
        assert result["test_total_loss"] == row["test_total_loss"]


@pytest.mark.e2e
def test_evaluate_lists_the_epochs_that_exist(mnist_dir, tmp_path):
    done = run_script(
        "train.py",
        "--preset",
        "smoke",
        "--epochs",
        "1",
        "--train-size",
        "256",
        "--workdir",
        tmp_path / "run",
        "--data-dir",
        mnist_dir,
    )
    assert done.returncode == 0, done.stderr
    out = run_script("evaluate.py", "--workdir", tmp_path / "run", "--epoch", "7", "--data-dir", mnist_dir)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: no checkpoint for epoch 7 in {tmp_path / 'run' / 'checkpoints'}; available epochs: 1"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--optimizer", "sgdd"], "unknown optimizer 'sgdd'"),
        (["--data-dir", "/nonexistent/mnist"], "data directory /nonexistent/mnist does not exist"),
    ],
)
def test_train_script_refuses_bad_input_in_one_line(args, message, tmp_path):
    done = run_script("train.py", "--workdir", tmp_path / "run", *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_epoch_runner_with_augmentation_equals_the_one_jit_train_step():
    # EpochRunner gathers + augments in one jit and trains in another (faster on XLA:CPU); the
    # result must be that of the pure make_train_step(..., augment) jitted as one function.
    from lenet_jax.augment import augmentation_from_config, make_augment
    from lenet_jax.data import Split, epoch_order, gather_batch
    from lenet_jax.model import model_from_config
    from lenet_jax.steps import create_train_state, make_train_step
    from lenet_jax.train import EpochRunner

    config = TINY.replace(augment_rotate=10.0, elastic_alpha=2.0, label_smoothing=0.1, ema_decay=0.9)
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 256, (40, 28, 28, 1), np.uint8), rng.integers(0, 10, 40).astype(np.int32))
    model, optimizer = model_from_config(config), optax.sgd(0.05)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(0))
    state = create_train_state(model, optimizer, init_key, ema=True)
    runner = EpochRunner(model, optimizer, config, train, shuffle_key)
    ran, _, _ = runner.run(jax.tree_util.tree_map(jnp.copy, state), epoch=1, step=0)

    step = jax.jit(
        make_train_step(model, optimizer, make_augment(augmentation_from_config(config)), 0.1, ema_decay=0.9)
    )
    for indices in epoch_order(shuffle_key, 1, len(train), config.batch_size):
        state, _ = step(state, gather_batch(jnp.asarray(train.images), jnp.asarray(train.labels), indices))
    assert int(ran.step) == int(state.step) == 3
    for a, b in zip(leaves(ran), leaves(state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weight_average_is_checkpointed_evaluated_and_resumed(idx_dir, tmp_path):
    from lenet_jax.evaluation import evaluate_checkpoint

    config = TINY.replace(ema_decay=0.9, epochs=3)
    straight = train_and_evaluate(config, tmp_path / "a", data_dir=idx_dir)
    row = straight.metrics[-1]
    assert {"raw_test_accuracy", "raw_test_total_loss"} <= set(row)
    assert row["test_total_loss"] != row["raw_test_total_loss"]  # two different sets of weights
    averaged = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir)
    raw = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir, averaged=False)
    assert averaged["averaged_weights"] and not raw["averaged_weights"]
    assert averaged["test_total_loss"] == row["test_total_loss"]
    assert raw["test_total_loss"] == row["raw_test_total_loss"]
    # The average is part of the resumable state: a resumed run continues it bit for bit.
    train_and_evaluate(config.replace(epochs=1), tmp_path / "b", data_dir=idx_dir)
    resumed = train_and_evaluate(config, tmp_path / "b", data_dir=idx_dir)
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_results_script_summarises_final_epochs(trained_run, tmp_path):
    done = run_script("results.py", trained_run, trained_run)
    assert done.returncode == 0, done.stderr
    *runs, summary = [json.loads(line) for line in done.stdout.splitlines()]
    final = reporting.read_metrics(trained_run)[-1]
    assert [r["test_error_percent"] for r in runs] == [round(100 * (1 - final["test_accuracy"]), 2)] * 2
    assert summary["runs"] == 2 and summary["test_error_percent_std"] == 0
    empty = run_script("results.py", tmp_path)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert "has no metrics.jsonl rows" in empty.stderr


@pytest.mark.parametrize(
    "per_call, probed",
    [
        (1, [(2, 2), (4, 4), (6, 6), (8, 8), (10, 10)]),
        # Calls of 2, 2, 1 steps per epoch: a probe runs after the call that passed its step.
        (2, [(2, 2), (4, 4), (7, 7), (9, 9), (10, 10)]),
    ],
)
def test_epoch_runner_probe_sees_the_state_mid_epoch(per_call, probed):
    from lenet_jax.data import Split
    from lenet_jax.model import model_from_config
    from lenet_jax.steps import create_train_state
    from lenet_jax.train import EpochRunner

    config = TINY.replace(steps_per_call=per_call)
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 256, (80, 28, 28, 1), np.uint8), rng.integers(0, 10, 80).astype(np.int32))
    model, optimizer = model_from_config(config), optax.sgd(0.05)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(0))
    runner = EpochRunner(model, optimizer, config, train, shuffle_key)
    seen = []
    state = create_train_state(model, optimizer, init_key)
    state, _, _ = runner.run(state, 1, 0, probe=(2, lambda s, step: seen.append((step, int(s.step)))))
    state, _, _ = runner.run(state, 2, 5, probe=(2, lambda s, step: seen.append((step, int(s.step)))))
    assert seen == probed  # 5 steps per epoch


class _Rows(list):
    def append_row(self, *row):
        self.append(row)


def test_steps_per_call_changes_nothing_but_the_calls():
    # 7 steps per epoch as 7 calls of 1 step, 3 calls of 3 (the last padded by 2 skipped steps)
    # and 1 call of 7 (the default, capped at the epoch): the same states, losses and log lines.
    from lenet_jax.data import Split
    from lenet_jax.model import model_from_config
    from lenet_jax.steps import create_train_state
    from lenet_jax.train import EpochRunner

    rng = np.random.default_rng(1)
    train = Split(rng.integers(0, 256, (100, 28, 28, 1), np.uint8), rng.integers(0, 10, 100).astype(np.int32))
    results = {}
    for per_call in (1, 3, None):
        config = TINY.replace(steps_per_call=per_call, log_every=3, activation="relu", pool="max")
        model, optimizer = model_from_config(config), optax.sgd(0.05, momentum=0.9)
        init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(0))
        runner = EpochRunner(model, optimizer, config, train, shuffle_key)
        state, logged, epoch_losses = create_train_state(model, optimizer, init_key), _Rows(), []
        for epoch in (1, 2):
            state, losses, _ = runner.run(state, epoch, (epoch - 1) * 7, log=logged.append_row)
            epoch_losses += losses
        results[per_call] = (runner.steps_per_call, state, logged, epoch_losses)
    assert [r[0] for r in results.values()] == [1, 3, 7]
    _, reference, reference_logged, reference_losses = results[1]
    assert [step for step, _ in reference_logged] == [3, 6, 9, 12]
    assert len(reference_losses) == 14 and int(reference.step) == 14
    for _, state, logged, losses in list(results.values())[1:]:
        assert [step for step, _ in logged] == [3, 6, 9, 12]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in reference_logged], rtol=1e-6)
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
        for a, b in zip(leaves(state), leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.e2e
def test_benchmark_time_to_99_runs_and_reports(mnist_dir):
    # The smoke preset never reaches 99%: the run goes to its last epoch and says so.
    done = run_script(
        "benchmark.py",
        "--data-dir",
        mnist_dir,
        "--time-to-99",
        "--preset",
        "smoke",
        "--seeds",
        "0",
        "--evals-per-epoch",
        "2",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    evals = [line for line in lines if "test_accuracy" in line]
    assert [e["epoch"] for e in evals] == [0.5, 1.0, 1.5, 2.0]
    assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(evals, evals[1:], strict=False))
    assert lines[-1]["summary"] == "time to 99%" and lines[-1]["reached"] == 0


def test_malloc_arenas_are_capped_unless_the_environment_decides(monkeypatch):
    import ctypes
    import platform

    from lenet_jax import cli

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    cli.limit_malloc_arenas()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert calls == ([(-8, cli.MALLOC_ARENAS)] if glibc else [])
    calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's setting wins
    cli.limit_malloc_arenas()
    assert calls == []
