"""Evaluation visits every image once; total loss is the sum of per-batch mean losses."""

import jax
import numpy as np
import optax
import pytest

from lenet_jax.data import Split
from lenet_jax.errors import DeviceMemoryError
from lenet_jax.evaluation import Evaluator
from lenet_jax.model import LeNet
from lenet_jax.steps import create_train_state


def test_evaluator_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (23, 28, 28, 1), np.uint8), rng.integers(0, 10, 23, np.int32))
    model = LeNet(init_scheme="flax")
    params = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0)).params
    result = Evaluator(model, batch_size=8).evaluate(params, split)

    logits = np.asarray(model.apply({"params": params}, split.images.astype(np.float32) / 255))
    losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, split.labels))
    batch_means = [losses[i : i + 8].mean() for i in range(0, 23, 8)]  # 8, 8 and 7 images
    assert result["count"] == 23 and result["correct"] == int((logits.argmax(-1) == split.labels).sum())
    assert result["accuracy"] == result["correct"] / 23
    np.testing.assert_allclose(result["total_loss"], sum(batch_means), rtol=1e-5)
    np.testing.assert_allclose(result["mean_loss"], np.mean(batch_means), rtol=1e-5)


def test_out_of_memory_from_python_names_the_config_field(monkeypatch):
    def exhausted(self, split):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 85899345920 bytes")

    monkeypatch.setattr(Evaluator, "_on_device", exhausted)
    split = Split(np.zeros((8, 28, 28, 1), np.uint8), np.zeros(8, np.int32))
    with pytest.raises(DeviceMemoryError, match=r"asked for 85\.9 GB\): lower eval_batch_size \(now 8\);"):
        Evaluator(LeNet(), batch_size=8).evaluate({}, split)
