"""Train state and the pure step functions.

`TrainState` is a plain pytree (step, params, opt_state, rng): no functions inside, so it can be
checkpointed, restored against a `jax.eval_shape` target, and donated to jit. The model and the
optimizer are closed over by the step factories instead; they are static to jit.

Steps are pure: `train_step(state, batch) -> (state, metrics)` and
`eval_step(params, batch) -> metrics`. Batches carry a `mask` (1 = real image, 0 = padding) so
that a partial last batch has the same shape as the others (one compilation) and the same
mean loss as the smaller batch it stands for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lenet_jax.model import init_params

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. rng is a raw uint32[2] key (checkpointable)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


# Jitted: run eagerly, init would dispatch (and compile) each of its many small ops one by one,
# ~8 s on a 2-core CPU. As one program it runs once, so it is compiled without backend
# optimisation: XLA:CPU spends seconds optimising the ten unrolled threefry random generators,
# for a program that then runs in milliseconds (4.5 s -> ~2 s here). The model and the optimizer
# are static (hashed by identity), the key is traced.
@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options={"xla_backend_optimization_level": 0})
def create_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    """A fresh state: params from `key`'s first split, the step rng from its second."""
    init_key, step_key = jax.random.split(key)
    params = init_params(model, init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=step_key,
    )


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the real (mask = 1) examples of a batch."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step for this model and optimizer (not jitted: the caller decides).

    augment(key, images), if given, transforms the batch's images first, with a key folded
    from the state's rng and step: deterministic per seed, replayed exactly on resume.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        images = batch["image"]
        if augment is not None:
            images = augment(jax.random.fold_in(state.rng, state.step), images)

        def loss_fn(params):
            logits = model.apply({"params": params}, images)
            return masked_cross_entropy(logits, batch["label"], batch["mask"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss}

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], Metrics]:
    """The pure evaluation step: mean loss over the batch's real images, and their counts.

    The batch may carry a leading group axis, (G, B, ...): then the model runs once on all G*B
    images (bigger, faster products) and the metrics come per group of B, shape (G,), exactly
    as G separate calls would give them.
    """

    def metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
        return {
            "loss": masked_cross_entropy(logits, labels, mask),
            "correct": jnp.sum(correct).astype(jnp.int32),
            "count": jnp.sum(mask).astype(jnp.int32),
        }

    def eval_step(params: Any, batch: Batch) -> Metrics:
        images = batch["image"]
        if images.ndim == 4:
            return metrics(model.apply({"params": params}, images), batch["label"], batch["mask"])
        groups, size = images.shape[:2]
        logits = model.apply({"params": params}, images.reshape(groups * size, *images.shape[2:]))
        return jax.vmap(metrics)(logits.reshape(groups, size, -1), batch["label"], batch["mask"])

    return eval_step
