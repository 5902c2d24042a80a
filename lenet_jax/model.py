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
import numpy as np

from lenet_jax import idx
from lenet_jax.config import Config

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


def toeplitz_conv(
    x: jax.Array, kernel: jax.Array, padding: int, blocks: int = 2, pool_layout: bool = False
) -> jax.Array:
    """A stride-1 NHWC convolution computed as one matrix product (same math as lax.conv).

    The output width is cut into `blocks` equal blocks. Each (output row, width block) is the
    product of the input patch it sees (kh rows x the block's input columns, flattened) with a
    banded ("Toeplitz") matrix built from the kernel:
        out[n, h, b*B + w, o] = patch[n, h, b, :] @ T[:, w*O + o]
        patch[n, h, b] = x[n, h:h+kh, b*B : b*B + B+kw-1, :].ravel()
    so the whole convolution is one (N*Ho*blocks, kh*(B+kw-1)*C) @ (kh*(B+kw-1)*C, B*O) product.
    T holds each weight B times, and zeros; a dense product of this size still runs at matmul
    speed on a CPU, while XLA:CPU's convolution for LeNet's tiny channel counts (1->6, 6->16)
    does not: the training step is ~2x faster this way (README, Performance). Two blocks
    measured best: fewer waste more multiplications on zeros, more make the product too thin.
    T comes from an einsum with a constant 0/1 selection tensor, so its gradient with respect
    to the kernel is an einsum too (no scatter).

    pool_layout=True (output height and block width even) orders T's columns as (w % 2, w // 2,
    o) instead of (w, o) and returns shape (N, Ho/2, 2, blocks, 2, B/2, O), where
    [n, i, p, b, q, k, o] is the output at row 2i+p, column b*B + 2k+q: the four members of
    each 2x2 pooling window sit in four contiguous slabs (see max_pool_2x2_from_pool_layout).
    """
    kh, kw, cin, cout = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, hp, wp, _ = x.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    if wo % blocks:
        blocks = 1
    width = wo // blocks  # output columns per block
    span = width + kw - 1  # input columns per block
    if pool_layout and (ho % 2 or width % 2):
        raise ValueError(f"pool_layout needs an even output height and block width, not {ho} and {width}")
    select = np.zeros((kw, span, width), np.float32)  # select[j, w + j, w] = 1
    for j in range(kw):
        select[j, np.arange(width) + j, np.arange(width)] = 1.0
    if pool_layout:  # output columns even ones first, then odd ones
        select = select[:, :, np.r_[0:width:2, 1:width:2]]
    toeplitz = jnp.einsum("jab,ijco->iacbo", select, kernel).reshape(kh * span * cin, width * cout)
    columns = jnp.stack([x[:, :, b * width : b * width + span] for b in range(blocks)], axis=2)
    patches = jnp.stack([columns[:, i : i + ho] for i in range(kh)], axis=3)  # n,ho,b,kh,span,c
    out = patches.reshape(n * ho * blocks, kh * span * cin) @ toeplitz
    if pool_layout:
        return out.reshape(n, ho // 2, 2, blocks, 2, width // 2, cout)
    return out.reshape(n, ho, wo, cout)


def can_pool_layout(height: int, width: int, padding: int, kernel_size: int, blocks: int = 2) -> bool:
    """Whether toeplitz_conv(..., padding, blocks, pool_layout=True) applies to an input of this
    size: even output height and block width (LeNet's conv1: 28 and 14; conv2: 10 and 5, no)."""
    ho, wo = (size + 2 * padding - kernel_size + 1 for size in (height, width))
    width = wo // blocks if wo % blocks == 0 else wo
    return ho % 2 == 0 and width % 2 == 0


def max_pool_2x2_from_pool_layout(y: jax.Array) -> jax.Array:
    """2x2 stride-2 max-pooling of toeplitz_conv(..., pool_layout=True)'s output, as NHWC.

    Elementwise maxima of contiguous slabs: XLA:CPU vectorises these, where a max-reduction
    over the 2x2 windows of an NHWC array with 6 channels innermost is slow, and so is its
    gradient (README, Performance).
    """
    y = jnp.maximum(y[:, :, :, :, 0], y[:, :, :, :, 1])  # the window's two columns
    y = jnp.maximum(y[:, :, 0], y[:, :, 1])  # and its two rows
    n, h, blocks, width, c = y.shape
    return y.reshape(n, h, blocks * width, c)


def xla_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A stride-1 NHWC convolution through lax.conv_general_dilated (cuDNN on GPU)."""
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


CONV_FNS = {"xla": xla_conv, "toeplitz": toeplitz_conv}


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' -> the fastest measured implementation for the default backend."""
    if conv_impl != "auto":
        return conv_impl
    return "toeplitz" if jax.default_backend() == "cpu" else "xla"


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

    The parameters are nn.Conv's (kernel (kh, kw, in, out), bias), whatever the implementation:
    checkpoints are interchangeable. impl 'xla' computes the graph as written (the reference);
    'toeplitz' computes the same function faster on a CPU. With max-pooling it pools first and
    adds the bias and applies the activation after, on 4x fewer values: exact, as max commutes
    with adding a constant and with any non-decreasing activation (sigmoid, tanh, relu), and
    float rounding is non-decreasing too. When the output width allows, it also takes the
    convolution in toeplitz_conv's pool layout, where pooling is elementwise.
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
        if self.impl == "toeplitz" and self.pool == "max":
            if can_pool_layout(x.shape[1], x.shape[2], self.padding, self.kernel_size):
                y = toeplitz_conv(x, kernel, self.padding, pool_layout=True)
                return act(max_pool_2x2_from_pool_layout(y) + bias)
            return act(pool_2x2(toeplitz_conv(x, kernel, self.padding), "max") + bias)
        return pool_2x2(act(CONV_FNS[self.impl](x, kernel, self.padding) + bias), self.pool)


class LeNet(nn.Module):
    """LeNet-5 as in the PyTorch tutorial, with the usual variations as options."""

    activation: str = "sigmoid"
    pool: str = "avg"
    dense_activation: bool = False
    feature_norm: bool = False
    init_scheme: str = "torch"  # not `init`: that would shadow nn.Module.init
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
        init_scheme=config.init,
        conv_impl=config.conv_impl,
    )


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The model's parameters, initialised from `key` on a dummy batch of one image."""
    return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
