"""Optimizers are values: named optax factories and schedules; the learning rate is injected state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optax

if TYPE_CHECKING:  # config.py validates against the names here
    from lenet_jax.config import Config

Factory = Callable[[optax.ScalarOrSchedule, "Config"], optax.GradientTransformation]


def _coupled_decay(inner: optax.GradientTransformation, config: Config):
    """L2 weight decay added to the gradient before the optimizer, as PyTorch's weight_decay."""
    if not config.weight_decay:
        return inner
    return optax.chain(optax.add_decayed_weights(config.weight_decay), inner)


def _inject(fn: Callable[..., optax.GradientTransformation], lr, **kwargs):
    return optax.inject_hyperparams(fn)(learning_rate=lr, **kwargs)


OPTIMIZERS: dict[str, Factory] = {
    "sgd": lambda lr, c: _coupled_decay(_inject(optax.sgd, lr), c),
    "momentum": lambda lr, c: _coupled_decay(_inject(optax.sgd, lr, momentum=c.momentum), c),
    "nesterov": lambda lr, c: _coupled_decay(_inject(optax.sgd, lr, momentum=c.momentum, nesterov=True), c),
    "adam": lambda lr, c: _coupled_decay(_inject(optax.adam, lr), c),
    "adamw": lambda lr, c: _inject(optax.adamw, lr, weight_decay=c.weight_decay),
    "rmsprop": lambda lr, c: _coupled_decay(_inject(optax.rmsprop, lr, momentum=c.momentum), c),
    "adagrad": lambda lr, c: _coupled_decay(_inject(optax.adagrad, lr), c),
    "lion": lambda lr, c: _inject(optax.lion, lr, weight_decay=c.weight_decay),
}


def _warmup_cosine(config: Config, total: int, steps_per_epoch: int) -> optax.Schedule:
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.lr, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


# name -> (config, total steps, steps per epoch) -> the learning rate at each step, peaking at config.lr.
SCHEDULES: dict[str, Callable[[Config, int, int], optax.Schedule]] = {
    "constant": lambda config, total, per_epoch: optax.constant_schedule(config.lr),
    "cosine": lambda config, total, per_epoch: optax.cosine_decay_schedule(config.lr, decay_steps=total),
    "warmup-cosine": _warmup_cosine,
}


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The config's schedule, peaking at config.lr, over config.epochs * steps_per_epoch steps."""
    return SCHEDULES[config.schedule](config, config.epochs * steps_per_epoch, steps_per_epoch)


def build_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer the config names, with its schedule and optional gradient clipping."""
    optimizer = OPTIMIZERS[config.optimizer](learning_rate_schedule(config, steps_per_epoch), config)
    if config.grad_clip is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip), optimizer)
    return optimizer


def current_learning_rate(opt_state: Any) -> Any:
    """The learning rate `inject_hyperparams` stored in opt_state; None without one (nothing logged)."""
    try:
        # hyperparams_states holds a schedule's own state under the same key: skip non-arrays.
        return optax.tree_utils.tree_get(
            opt_state, "learning_rate", filtering=lambda _, value: hasattr(value, "dtype")
        )
    except KeyError:  # several (e.g. two chained optimizers): ambiguous, log none
        return None
