"""LeNet in flax.linen, with the tutorial's graph as the default.

Input is NHWC, (N, 28, 28, 1) float32 in [0, 1]; output is (N, 10) logits.
Default graph: conv 6@5x5 pad 2 -> sigmoid -> avg-pool 2/2 -> conv 16@5x5 valid -> sigmoid ->
avg-pool 2/2 -> flatten (5*5*16) -> Dense 120 -> Dense 84 -> Dense 10, 61,706 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lenet_jax.config import Config

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
    "relu": nn.relu,
}


def torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Conv/Linear initialiser: uniform in +-1/sqrt(fan_in).

    For weights PyTorch uses kaiming_uniform_(a=sqrt(5)), whose bound gain*sqrt(3/fan_in) with
    gain = sqrt(2/(1+5)) simplifies to 1/sqrt(fan_in); its biases use the same bound. The
    fan-in is passed in rather than read from the shape because a bias's shape does not hold it.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class LeNet(nn.Module):
    """LeNet-5 as in the PyTorch tutorial, with the usual variations as options."""

    activation: str = "sigmoid"
    pool: str = "avg"
    dense_activation: bool = False
    init_scheme: str = "torch"  # not `init`: that would shadow nn.Module.init

    def _initializers(self, fan_in: int) -> dict[str, Any]:
        if self.init_scheme == "torch":
            return {"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
        return {}  # Flax's defaults: lecun_normal kernels, zero biases.

    def _pool(self, x: jax.Array) -> jax.Array:
        if self.pool == "max":
            return nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.avg_pool(x, (2, 2), strides=(2, 2))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATION_FNS[self.activation]
        x = nn.Conv(6, (5, 5), padding=2, **self._initializers(x.shape[-1] * 25), name="conv1")(x)
        x = self._pool(act(x))
        x = nn.Conv(16, (5, 5), padding="VALID", **self._initializers(6 * 25), name="conv2")(x)
        x = self._pool(act(x))
        x = x.reshape((x.shape[0], -1))  # (N, 5*5*16), flattened in HWC order
        for i, width in enumerate((120, 84)):
            x = nn.Dense(width, **self._initializers(x.shape[-1]), name=f"dense{i + 1}")(x)
            if self.dense_activation:
                x = act(x)
        return nn.Dense(NUM_CLASSES, **self._initializers(x.shape[-1]), name="dense3")(x)


def model_from_config(config: Config) -> LeNet:
    """The LeNet that a config describes."""
    return LeNet(
        activation=config.activation,
        pool=config.pool,
        dense_activation=config.dense_activation,
        init_scheme=config.init,
    )


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The model's parameters, initialised from `key` on a dummy batch of one image."""
    return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
