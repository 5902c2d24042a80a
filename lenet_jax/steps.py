"""Train state (a plain pytree) and the pure steps: `train_step(state, batch) -> (state, metrics)`,
`eval_step(params, batch) -> metrics`; a batch's `mask` (0 = padding) keeps one shape (one compile).
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
    """Everything that changes during training; rng a raw uint32[2] key; ema_params an average or None."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


# Jitted: eagerly, init would dispatch (and compile) its many small ops one by one.
@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def create_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, key: jax.typing.ArrayLike, ema: bool = False
) -> TrainState:
    """A fresh state: params = model.init(key, ...) (as in a notebook), the step rng its first split."""
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
    """Mean softmax cross-entropy over the real (mask = 1) examples of a batch, labels smoothed by s."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """min(decay, (1 + step) / (10 + step)): forgets the initial weights fast, as TensorFlow's EMA."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def evaluated_params(state: TrainState) -> Any:
    """The weights a run evaluates and predicts with: the average if it keeps one, else params."""
    return state.params if state.ema_params is None else state.ema_params


def augmentation_key(state: TrainState, ahead: jax.Array | int = 0) -> jax.Array:
    """The key augmenting step state.step + ahead's batch: a function of the seed and the step only."""
    return jax.random.fold_in(state.rng, state.step + ahead)


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step (not jitted: the caller decides); augment(key, images) is applied first."""

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
        if ema_decay:
            if ema_params is None:  # checked once, while tracing
                raise ValueError(
                    "ema_decay > 0 needs a state that holds an average: create it with "
                    "create_train_state(model, optimizer, key, ema=True)"
                )
            decay = ema_decay_at(state.step, ema_decay)
            ema_params = jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
        return state, {"loss": loss}

    return train_step


def make_eval_step(model: nn.Module, probabilities: bool = False) -> Callable[[Any, Batch], Metrics]:
    """The pure evaluation step: mean loss over the batch's real images, and their counts (probabilities:
    each image's softmax too, the report's)."""

    def eval_step(params: Any, batch: Batch) -> Metrics:
        logits = model.apply({"params": params}, batch["image"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * batch["mask"]
        metrics = {
            "loss": masked_cross_entropy(logits, batch["label"], batch["mask"]),
            "correct": jnp.sum(correct).astype(jnp.int32),
            "count": jnp.sum(batch["mask"]).astype(jnp.int32),
        }
        return {**metrics, "probabilities": jax.nn.softmax(logits)} if probabilities else metrics

    return eval_step
