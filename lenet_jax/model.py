"""LeNet in flax.linen, with the tutorial's graph as the default.

Input is NHWC, (N, 28, 28, 1) float32 in [0, 1]; output is (N, 10) logits.
Default graph: conv 6@5x5 pad 2 -> sigmoid -> avg-pool 2/2 -> conv 16@5x5 valid -> sigmoid ->
avg-pool 2/2 -> flatten (5*5*16) -> Dense 120 -> Dense 84 -> Dense 10, 61,706 parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lenet_jax import idx, toeplitz
from lenet_jax.config import Config
from lenet_jax.speed import resolve_conv_impl

NUM_CLASSES = idx.NUM_CLASSES
IMAGE_SHAPE = (idx.IMAGE_SIZE, idx.IMAGE_SIZE, 1)

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


def xla_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A stride-1 NHWC convolution through lax.conv_general_dilated (cuDNN on GPU)."""
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


CONV_FNS = {"xla": xla_conv, "toeplitz": toeplitz.toeplitz_conv}


def pool_2x2(x: jax.Array, kind: str) -> jax.Array:
    """2x2 stride-2 pooling as a reshape + reduction (H and W even, as in LeNet).

    Same values as nn.avg_pool / nn.max_pool; XLA fuses the reshape form with its neighbours,
    where reduce_window (what those use) is a separate, slower loop on CPU.
    """
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))


class ConvBlock(nn.Module):
    """LeNet's unit: stride-1 convolution (+ bias) -> activation -> 2x2 stride-2 pooling.

    The parameters are nn.Conv's (kernel (kh, kw, in, out), bias) whatever `impl` computes the
    convolution, so checkpoints are interchangeable: 'xla' is the graph as written (lax.conv),
    'toeplitz' the same function as matrix products, faster on a CPU (lenet_jax.toeplitz).
    """

    features: int
    kernel_size: int
    padding: int
    activation: str
    pool: str
    impl: str
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape)
        bias = self.param("bias", self.bias_init, (self.features,))
        act = ACTIVATION_FNS[self.activation]
        if self.impl == "toeplitz" and self.pool == "max":  # speed: pools before bias + act (exact)
            return toeplitz.conv_max_pool_act(x, kernel, bias, self.padding, act)
        return pool_2x2(act(CONV_FNS[self.impl](x, kernel, self.padding) + bias), self.pool)


class LeNet(nn.Module):
    """LeNet-5 as in the PyTorch tutorial, with the usual variations as options."""

    activation: str = "sigmoid"
    pool: str = "avg"
    dense_activation: bool = False
    feature_norm: bool = False
    init_scheme: str = "torch"
    conv_impl: str = "auto"

    def _initializers(self, fan_in: int) -> dict[str, Any]:
        if self.init_scheme == "torch":
            return {"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
        return {}  # Flax's defaults: lecun_normal kernels, zero biases.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATION_FNS[self.activation]
        block = functools.partial(
            ConvBlock, activation=self.activation, pool=self.pool, impl=resolve_conv_impl(self.conv_impl)
        )
        x = block(6, 5, 2, **self._initializers(x.shape[-1] * 25), name="conv1")(x)
        x = block(16, 5, 0, **self._initializers(6 * 25), name="conv2")(x)
        if self.feature_norm:  # over each image's 5x5x16 features; scale and offset per channel
            x = nn.LayerNorm(reduction_axes=(1, 2, 3), name="feature_norm")(x)
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
        feature_norm=config.feature_norm,
        init_scheme=config.init_scheme,
        conv_impl=config.conv_impl,
    )


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The model's parameters, initialised from `key` on a dummy batch of one image."""
    return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
