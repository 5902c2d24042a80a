"""LeNet in flax.linen: the PyTorch tutorial's graph.

Input is NHWC, (N, 28, 28, 1) float32 in [0, 1]; output is (N, 10) logits.
Default graph: conv 6@5x5 pad 2 -> sigmoid -> avg-pool 2/2 -> conv 16@5x5 valid -> sigmoid ->
avg-pool 2/2 -> flatten (5*5*16) -> Dense 120 -> Dense 84 -> Dense 10, 61,706 parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lenet_jax import idx

NUM_CLASSES = idx.NUM_CLASSES
IMAGE_SHAPE = (idx.IMAGE_SIZE, idx.IMAGE_SIZE, 1)

# The choices of each model field, with what they compute (config.py validates against these).
ACTIVATIONS = {"sigmoid": nn.sigmoid, "tanh": nn.tanh, "relu": nn.relu}
POOLS = {"avg": nn.avg_pool, "max": nn.max_pool}
INIT_SCHEMES = ("torch", "flax")  # PyTorch's default initialisation, or Flax's


def torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Conv/Linear initialiser for weights (kaiming_uniform_(a=sqrt(5))) and biases:
    uniform in +-1/sqrt(fan_in), the fan-in given (a bias's shape does not hold it)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class ConvBlock(nn.Conv):
    """LeNet's unit, the tutorial's Conv2d -> activation -> 2x2 stride-2 pooling: an nn.Conv and the
    rest, so a block computing it another way keeps every checkpoint's parameter names and shapes."""

    activation: str = "sigmoid"
    pool: str = "avg"

    def __call__(self, x: jax.Array) -> jax.Array:
        x = ACTIVATIONS[self.activation](super().__call__(x))
        return POOLS[self.pool](x, window_shape=(2, 2), strides=(2, 2))


class LeNet(nn.Module):
    """The tutorial's LeNet-5, variations as options; block: ConvBlock or a drop-in (speed's choice)."""

    activation: str = "sigmoid"
    pool: str = "avg"
    dense_activation: bool = False
    feature_norm: bool = False
    init_scheme: str = "torch"
    block: type[ConvBlock] = ConvBlock
    conv_impl: str | None = None  # 0.2's field, one more version: ignored, with a warning

    def __post_init__(self) -> None:
        if self.conv_impl is not None:
            message = "LeNet(conv_impl=...) is ignored since lenet-jax 0.3: pass block= (speed.conv_block)"
            warnings.warn(message, DeprecationWarning, stacklevel=4)  # the caller of LeNet(...)
            object.__setattr__(self, "conv_impl", None)  # once: flax's clones of it do not warn again
        super().__post_init__()

    def _initializers(self, fan_in: int) -> dict[str, Any]:
        if self.init_scheme == "torch":
            return {"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
        return {}  # Flax's defaults: lecun_normal kernels, zero biases.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def block(features: int, padding: int, fan_in: int, name: str) -> ConvBlock:
            options = {"activation": self.activation, "pool": self.pool, **self._initializers(fan_in)}
            return self.block(features, (5, 5), padding=padding, name=name, **options)

        x = block(6, 2, 25 * x.shape[-1], "conv1")(x)  # (N, 14, 14, 6)
        x = block(16, 0, 25 * 6, "conv2")(x)  # (N, 5, 5, 16)
        if self.feature_norm:  # over each image's 5x5x16 features; scale and offset per channel
            x = nn.LayerNorm(reduction_axes=(1, 2, 3), name="feature_norm")(x)
        x = x.reshape((x.shape[0], -1))  # (N, 5*5*16), flattened in HWC order
        for i, width in enumerate((120, 84)):
            x = nn.Dense(width, **self._initializers(x.shape[-1]), name=f"dense{i + 1}")(x)
            if self.dense_activation:
                x = ACTIVATIONS[self.activation](x)
        return nn.Dense(NUM_CLASSES, **self._initializers(x.shape[-1]), name="dense3")(x)


def model_from_config(config: Any, block: type[ConvBlock] = ConvBlock) -> LeNet:
    """The LeNet that a config (lenet_jax.config.Config) describes: its fields of LeNet's names."""
    fields = ("activation", "pool", "dense_activation", "feature_norm", "init_scheme")
    return LeNet(**{name: getattr(config, name) for name in fields}, block=block)


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The model's parameters, initialised from `key` on a dummy batch of one image."""
    return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
