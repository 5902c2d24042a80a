"""End to end: the Python API on synthetic data, and the real scripts on real MNIST."""

import json
import struct
from pathlib import Path

import chex
import optax
import pytest
from conftest import run_script, script_main

from lenet_jax import cli, run_log
from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.train import train_and_evaluate
from lenet_jax.workdir import read_config, read_metrics

TINY = Config(epochs=2, batch_size=16, eval_batch_size=16, log_every=2, init_scheme="flax")


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


def test_python_api_takes_any_optax_optimizer(idx_dir, tmp_path):
    result = train_and_evaluate(TINY, tmp_path / "run", optimizer=optax.adam(1e-3), data_dir=idx_dir)
    assert [row["epoch"] for row in result.metrics] == [1, 2]
    assert result.metrics[-1]["step"] == 2 * 6  # 96 images / 16 per batch
    assert result.metrics[-1]["learning_rate"] is None  # plain optax.adam injects none
    assert Checkpoints(tmp_path / "run").epochs() == [1, 2]
    assert read_config(tmp_path / "run")["optimizer"] == "python"
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]


def test_same_seed_same_params_other_seed_differs(idx_dir, tmp_path):
    one = TINY.replace(epochs=1)
    a = train_and_evaluate(one, tmp_path / "a", data_dir=idx_dir).state
    b = train_and_evaluate(one, tmp_path / "b", data_dir=idx_dir).state
    c = train_and_evaluate(one.replace(seed=1), tmp_path / "c", data_dir=idx_dir).state
    chex.assert_trees_all_equal(a.params, b.params)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(a.params, c.params)


@pytest.mark.e2e
def test_train_and_evaluate_scripts_on_real_mnist(mnist_dir, tmp_path, capsys):
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
    rows = read_metrics(workdir)
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
    assert [s for s, _ in scalars[run_log.TAG_TRAIN_LOSS]] == [10, 20, 30, 40, 50, 60]
    assert [s for s, _ in scalars[run_log.TAG_ACCURACY]] == [1, 2]
    assert len(scalars[run_log.TAG_TEST_TOTAL_LOSS]) == 2
    for row in rows:  # in-process: the subprocess above already showed a real launch
        argv = ["--workdir", str(workdir), "--epoch", str(row["epoch"]), "--data-dir", str(mnist_dir)]
        assert cli.run(script_main("evaluate.py"), argv) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["epoch"] == row["epoch"] and result["count"] == 10_000
        assert result["test_accuracy"] == row["test_accuracy"]
        assert result["test_total_loss"] == row["test_total_loss"]


def test_weight_average_is_checkpointed_and_evaluated(idx_dir, tmp_path):
    from lenet_jax.evaluation import evaluate_checkpoint

    result = train_and_evaluate(TINY.replace(ema_decay=0.9), tmp_path / "a", data_dir=idx_dir)
    row = result.metrics[-1]
    assert {"raw_test_accuracy", "raw_test_total_loss"} <= set(row)
    assert row["test_total_loss"] != row["raw_test_total_loss"]  # two different sets of weights
    averaged = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir)
    raw = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir, averaged=False)
    assert averaged["averaged_weights"] and not raw["averaged_weights"]
    assert averaged["test_total_loss"] == row["test_total_loss"]
    assert raw["test_total_loss"] == row["raw_test_total_loss"]  # (its resume: test_resume.py)
