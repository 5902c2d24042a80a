"""The pure steps: masking makes a padded batch equal to the smaller batch it stands for."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax import steps
from lenet_jax.model import LeNet
from lenet_jax.speed import run_steps
from lenet_jax.steps import create_train_state, make_eval_step, make_train_step


def batch_of(n, pad_to=None, seed=0):
    """n random images, labels and a mask of ones; zeros after them up to pad_to."""
    rng = np.random.default_rng(seed)
    batch = {"image": rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)}
    batch |= {"label": rng.integers(0, 10, n).astype(np.int32), "mask": np.ones(n, np.float32)}
    pad = [(0, (pad_to or n) - n)]
    return {k: jnp.asarray(np.pad(v, pad + [(0, 0)] * (v.ndim - 1))) for k, v in batch.items()}


def test_padded_batch_gives_the_same_update_as_the_small_batch_and_the_step_is_pure():
    model, optimizer = LeNet(), optax.sgd(0.05)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(model, optimizer))
    small_state, small = step(state, batch_of(5))
    padded_state, padded = step(state, batch_of(5, pad_to=16))
    np.testing.assert_allclose(small["loss"], padded["loss"], rtol=1e-6)
    chex.assert_trees_all_close(small_state.params, padded_state.params, rtol=1e-5, atol=1e-7)
    assert int(small_state.step) == 1
    chex.assert_trees_all_equal(step(state, batch_of(5))[0], small_state)  # the same inputs, the same state


def test_eval_step_counts_only_real_images():
    model = LeNet()
    state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0))
    batch = batch_of(5, pad_to=8)
    metrics = jax.jit(make_eval_step(model))(state.params, batch)
    logits = model.apply({"params": state.params}, batch["image"][:5])
    expected_correct = int((jnp.argmax(logits, -1) == batch["label"][:5]).sum())
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:5])
    assert int(metrics["count"]) == 5 and int(metrics["correct"]) == expected_correct
    np.testing.assert_allclose(metrics["loss"], expected_loss.mean(), rtol=1e-6)


def test_label_smoothing_is_the_smoothed_cross_entropy():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 10))
    labels, mask = jnp.arange(6) % 10, jnp.ones(6)
    targets = jax.nn.one_hot(labels, 10) * 0.9 + 0.01  # 1 - s on the label, s / 10 everywhere
    expected = optax.softmax_cross_entropy(logits, targets).mean()
    np.testing.assert_allclose(steps.masked_cross_entropy(logits, labels, mask, 0.1), expected, rtol=1e-6)
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(steps.masked_cross_entropy(logits, labels, mask), plain, rtol=1e-6)


def test_ema_follows_the_params_with_the_ramped_decay():
    model, optimizer = LeNet(), optax.sgd(0.5)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), ema=True)
    assert create_train_state(model, optimizer, jax.random.PRNGKey(0)).ema_params is None
    chex.assert_trees_all_equal(state.ema_params, state.params)  # starts at the initial weights
    step = jax.jit(make_train_step(model, optimizer, ema_decay=0.999))
    new, _ = step(state, batch_of(8))
    d = float(steps.ema_decay_at(jnp.int32(0), 0.999))
    assert d == np.float32(0.1)  # the ramp: min(0.999, 1/10) at step 0
    expected = jax.tree_util.tree_map(lambda p0, p1: d * p0 + (1 - d) * p1, state.params, new.params)
    chex.assert_trees_all_close(new.ema_params, expected, rtol=1e-5, atol=1e-7)
    assert float(steps.ema_decay_at(jnp.int32(100_000), 0.999)) == np.float32(0.999)


def test_ema_without_an_averaged_state_is_a_clear_error():
    model, optimizer = LeNet(), optax.sgd(0.5)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="ema=True"):
        jax.jit(make_train_step(model, optimizer, ema_decay=0.9))(state, batch_of(4))


def test_run_steps_equals_separate_steps_and_skips_padding_rows():
    # One lax.scan over 3 real batches and a padding row: 3 separate steps' state and losses; loss 0.
    model, optimizer = LeNet(activation="relu", pool="max"), optax.sgd(0.05, momentum=0.9)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), ema=True)
    train_step = make_train_step(model, optimizer, label_smoothing=0.1, ema_decay=0.9)
    batches = [batch_of(8, seed=seed) for seed in range(4)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)
    scanned, losses = jax.jit(lambda s, b, n: run_steps(train_step, s, b, n))(state, stacked, 3)
    step = jax.jit(train_step)
    expected = []
    for batch in batches[:3]:
        state, metrics = step(state, batch)
        expected.append(float(metrics["loss"]))
    assert losses.shape == (4,) and float(losses[3]) == 0.0
    np.testing.assert_allclose(losses[:3], expected, rtol=1e-6)
    chex.assert_trees_all_close(scanned, state, rtol=1e-5, atol=1e-7)
