"""Checkpoints say what made them; a restore tells a damaged checkpoint from one that does not fit."""

import json

import jax
import optax
import pytest
from conftest import snapshot

from lenet_jax.checkpoints import Checkpoints, describe
from lenet_jax.config import Config
from lenet_jax.data import load_dataset
from lenet_jax.errors import CheckpointError, DivergedError
from lenet_jax.train import make_trainer, train_and_evaluate

TINY = Config(epochs=1, batch_size=16, eval_batch_size=16, log_every=2, init_scheme="flax")


@pytest.fixture
def adam_run(idx_dir, tmp_path):
    workdir = tmp_path / "run"
    train_and_evaluate(TINY, workdir, optimizer=optax.adam(1e-3), data_dir=idx_dir)
    return workdir


def test_a_python_optimizer_is_recorded_as_such_with_its_state_structure(adam_run):
    saved = json.loads((adam_run / "config.json").read_text())
    assert saved["config"]["optimizer"] == "python"
    assert not {"lr", "momentum", "schedule", "weight_decay"} & set(saved["config"])  # not used
    state = saved["optimizer_source"]["state"]
    assert saved["optimizer_source"]["kind"] == "python"
    assert state["0.mu.dense1.kernel"] == "(400, 120) float32"
    assert {"jax", "flax", "optax", "orbax-checkpoint"} <= set(saved["provenance"]["versions"])
    assert saved["provenance"]["backend"] == "cpu" and saved["provenance"]["cpu"]
    with Checkpoints(adam_run, read_only=True) as checkpoints:
        meta = checkpoints.restore_meta(1)
    assert meta["format_version"] == 3 and meta["optimizer_source"] == saved["optimizer_source"]
    assert meta["config"] == saved["config"] and meta["provenance"]["versions"]["jax"] == jax.__version__


def test_resuming_with_an_optimizer_of_another_state_is_refused_before_any_restore(adam_run, idx_dir):
    before = snapshot(adam_run / "checkpoints")
    with pytest.raises(CheckpointError) as refused:
        train_and_evaluate(TINY.replace(epochs=2), adam_run, optimizer=optax.sgd(0.1), data_dir=idx_dir)
    message = str(refused.value)
    assert "is intact but does not fit this run's train_state" in message and "damaged" not in message
    assert "opt_state.0.mu.conv1.bias: checkpoint (6,) float32, now none" in message
    assert "\n" not in message and snapshot(adam_run / "checkpoints") == before


def test_resuming_with_an_optimizer_of_the_same_state_is_allowed_and_said(adam_run, idx_dir, capsys):
    two = TINY.replace(epochs=2)
    result = train_and_evaluate(two, adam_run, optimizer=optax.adam(3e-4), data_dir=idx_dir)
    assert "has the state structure of the checkpoint's" in capsys.readouterr().out
    assert [row["epoch"] for row in result.metrics] == [1, 2] and Checkpoints(adam_run).epochs() == [1, 2]
    assert result.metrics[-1]["step"] == 2 * 6  # 96 images / 16 per batch
    assert result.metrics[-1]["learning_rate"] is None  # plain optax.adam injects none
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]


def test_a_diverging_python_optimizer_is_not_told_about_a_learning_rate_it_did_not_use(idx_dir, tmp_path):
    config = TINY.replace(activation="relu")
    with pytest.raises(DivergedError, match="optimizer passed to train_and_evaluate") as diverged:
        train_and_evaluate(config, tmp_path / "run", optimizer=optax.sgd(1e5), data_dir=idx_dir)
    assert "--lr" not in str(diverged.value)


def test_damaged_and_mismatched_checkpoints_get_different_messages(idx_dir, tmp_path):
    workdir = tmp_path / "run"
    train_and_evaluate(TINY.replace(epochs=2), workdir, data_dir=idx_dir)
    trainer = make_trainer(TINY.replace(activation="relu", feature_norm=True), load_dataset(idx_dir).train)
    with Checkpoints(workdir) as checkpoints, pytest.raises(CheckpointError) as mismatch:
        checkpoints.restore_state(2, trainer.abstract_state())
    assert "intact but does not fit" in str(mismatch.value) and "damaged" not in str(mismatch.value)
    assert "params (feature_norm.bias: checkpoint has none, now (16,) float32" in str(mismatch.value)
    # (A damaged one, and another config: tests/test_fuzz.py, family "checkpoints".)


def test_describe_spells_paths_alike_for_namedtuples_dicts_and_lists():
    state = optax.adam(1e-3).init({"w": jax.numpy.zeros((2, 3))})
    assert describe(state) == {"0.count": "() int32", "0.mu.w": "(2, 3) float32", "0.nu.w": "(2, 3) float32"}
    assert describe([{"count": jax.ShapeDtypeStruct((), "int32")}]) == {"0.count": "() int32"}
