"""Train state and the pure step functions.

`TrainState` is a plain pytree (checkpointed, restored against a `jax.eval_shape` target, donated to
jit); the model and optimizer are closed over. `train_step(state, batch) -> (state, metrics)`,
`eval_step(params, batch) -> metrics`; a batch's `mask` (0 = padding) gives a partial last batch
the shape of the others (one compilation) and the mean loss of the smaller batch it stands for.
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
    """Everything that changes during training; rng is a raw uint32[2] key (checkpointable).
    ema_params: a moving average of params (evaluated instead of them), or None (no leaves)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


# Jitted: run eagerly, init would dispatch (and compile) each of its many small ops one by one.
# The model and the optimizer are static (hashed by identity), the key is traced.
@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def create_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, key: jax.typing.ArrayLike, ema: bool = False
) -> TrainState:
    """A fresh state: params = model.init(key, ...) (as in a notebook), the step rng the key's first
    split; ema: keep an average of the weights too (starting equal to them)."""
    params = init_params(model, key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.split(key)[0],
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None,
    )


def masked_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Mean softmax cross-entropy over the real (mask = 1) examples of a batch; label_smoothing s:
    the target puts 1 - s on the label and s spread evenly over all classes."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The averaging decay at a step, min(decay, (1 + step) / (10 + step)): the ramp forgets the
    initial weights fast early on, as TensorFlow's ExponentialMovingAverage(num_updates=...)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def evaluated_params(state: TrainState) -> Any:
    """The weights a run evaluates and predicts with: the average if it keeps one, else params."""
    return state.params if state.ema_params is None else state.ema_params


def augmentation_key(state: TrainState, ahead: jax.Array | int = 0) -> jax.Array:
    """The key that augments the batch of step state.step + ahead: a function of the seed and
    the step only (`ahead` lets a call that runs several steps draw their keys up front)."""
    return jax.random.fold_in(state.rng, state.step + ahead)


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step (not jitted: the caller decides). augment(key, images): transforms the
    batch first, keyed by `augmentation_key`; label_smoothing: of the training loss only; ema_decay >
    0: updates state.ema_params."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        images = batch["image"]
        if augment is not None:
            images = augment(augmentation_key(state), images)

        def loss_fn(params):
            logits = model.apply({"params": params}, images)
            return masked_cross_entropy(logits, batch["label"], batch["mask"], label_smoothing)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay and ema_params is None:  # checked once, while tracing
            raise ValueError(
                "ema_decay > 0 needs a state that holds an average: create it with "
                "create_train_state(model, optimizer, key, ema=True)"
            )
        if ema_decay:
            decay = ema_decay_at(state.step, ema_decay)
            ema_params = jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
        )
        return new_state, {"loss": loss}

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], Metrics]:
    """The pure evaluation step: mean loss over the batch's real images, and their counts."""

    def eval_step(params: Any, batch: Batch) -> Metrics:
        logits = model.apply({"params": params}, batch["image"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * batch["mask"]
        return {
            "loss": masked_cross_entropy(logits, batch["label"], batch["mask"]),
            "correct": jnp.sum(correct).astype(jnp.int32),
            "count": jnp.sum(batch["mask"]).astype(jnp.int32),
        }

    return eval_step
