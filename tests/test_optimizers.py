"""Every registered optimizer trains; schedules and the logged learning rate are right."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax.config import Config
from lenet_jax.model import LeNet
from lenet_jax.optimizers import OPTIMIZERS, build_optimizer, current_learning_rate, learning_rate_schedule
from lenet_jax.steps import create_train_state, make_train_step

TINY_LR = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}
TINY_LR |= {"adagrad": 0.05, "lion": 1e-3}  # learning rates that suit each optimizer on this tiny problem


@pytest.mark.parametrize("name", sorted({*OPTIMIZERS, *TINY_LR}))  # each has a tiny lr, and only they
def test_registered_optimizer_lowers_the_loss(name):
    config = Config(optimizer=name, lr=TINY_LR[name], init_scheme="flax", activation="relu")
    optimizer = build_optimizer(config, steps_per_epoch=10)
    model = LeNet(activation="relu", init_scheme="flax")
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(model, optimizer))
    rng = np.random.default_rng(0)  # 32 images whose class is the position of a bright square
    labels = rng.integers(0, 10, 32)
    images = rng.uniform(0, 0.15, (32, 28, 28, 1)).astype(np.float32)
    for i, c in enumerate(labels):
        r, col = 2 + (c // 5) * 10, 2 + (c % 5) * 5
        images[i, r : r + 6, col : col + 6] = 1.0
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels), "mask": jnp.ones(32)}
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert current_learning_rate(state.opt_state) == pytest.approx(TINY_LR[name])


def test_weight_decay_and_clipping_are_applied():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([30.0, 40.0, 0.0])}  # global norm 50
    clipped = build_optimizer(Config(lr=1.0, grad_clip=5.0), 10)
    updates, _ = clipped.update(grads, clipped.init(params), params)
    np.testing.assert_allclose(updates["w"], [-3.0, -4.0, 0.0], rtol=1e-6)
    decayed = build_optimizer(Config(lr=1.0, weight_decay=0.1), 10)
    updates, _ = decayed.update({"w": jnp.zeros(3)}, decayed.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, -0.1, -0.1], rtol=1e-6)


def test_schedules():
    constant = learning_rate_schedule(Config(lr=0.5, epochs=2), 10)
    assert float(constant(0)) == float(constant(19)) == 0.5
    cosine = learning_rate_schedule(Config(lr=0.5, epochs=2, schedule="cosine"), 10)
    assert float(cosine(0)) == pytest.approx(0.5) and float(cosine(20)) == pytest.approx(0.0)
    warmup = Config(lr=0.5, epochs=2, schedule="warmup-cosine", warmup_epochs=0.5)
    warm = learning_rate_schedule(warmup, 10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5)
    assert float(warm(20)) == pytest.approx(0.0, abs=1e-6)


def test_learning_rate_is_read_from_the_state_and_follows_the_schedule_and_plain_optax_has_none():
    optimizer = build_optimizer(Config(lr=0.5, epochs=1, schedule="cosine"), 4)
    params, seen = {"w": jnp.ones(2)}, []
    state = optimizer.init(params)
    for _ in range(4):
        _, state = optimizer.update({"w": jnp.ones(2)}, state, params)
        seen.append(float(current_learning_rate(state)))
    assert seen[0] == pytest.approx(0.5) and seen == sorted(seen, reverse=True)
    assert current_learning_rate(optax.adam(1e-3).init({"w": jnp.ones(2)})) is None
