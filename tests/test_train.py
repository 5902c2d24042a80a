"""The Python API on synthetic data (the scripts on real MNIST: tests/test_parallel.py)."""

import chex
import pytest

from lenet_jax.config import Config
from lenet_jax.evaluation import evaluate_checkpoint
from lenet_jax.train import train_and_evaluate

TINY = Config(epochs=2, batch_size=16, eval_batch_size=16, log_every=2, init_scheme="flax")


def test_same_seed_same_params_other_seed_differs(idx_dir, tmp_path):
    one = TINY.replace(epochs=1)
    a = train_and_evaluate(one, tmp_path / "a", data_dir=idx_dir).state
    b = train_and_evaluate(one, tmp_path / "b", data_dir=idx_dir).state
    c = train_and_evaluate(one.replace(seed=1), tmp_path / "c", data_dir=idx_dir).state
    chex.assert_trees_all_equal(a.params, b.params)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(a.params, c.params)


def test_weight_average_is_checkpointed_and_evaluated(idx_dir, tmp_path):
    row = train_and_evaluate(TINY.replace(ema_decay=0.9), tmp_path / "a", data_dir=idx_dir).metrics[-1]
    assert {"raw_test_accuracy", "raw_test_total_loss"} <= set(row)
    assert row["test_total_loss"] != row["raw_test_total_loss"]  # two different sets of weights
    averaged = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir)
    raw = evaluate_checkpoint(tmp_path / "a", data_dir=idx_dir, averaged=False)
    assert averaged["averaged_weights"] and not raw["averaged_weights"]
    assert averaged["test_total_loss"] == row["test_total_loss"]
    assert raw["test_total_loss"] == row["raw_test_total_loss"]  # (its resume: test_resume.py)
