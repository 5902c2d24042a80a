"""Convolutions as matrix products: `ToeplitzBlock`, model.ConvBlock's drop-in on a CPU (speed.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lenet_jax.model import ACTIVATIONS, ConvBlock


def toeplitz_conv(
    x: jax.Array, kernel: jax.Array, padding: int, blocks: int = 2, pool_layout: bool = False
) -> jax.Array:
    """A stride-1 NHWC convolution: each (row, block of B columns) patch times a banded matrix T.
    pool_layout: (N, Ho/2, 2, blocks, 2, B/2, O), [n, i, p, b, q, k, o] at row 2i+p, col b*B + 2k+q."""
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
    """Whether pool_layout applies: even output height and block width (LeNet's conv1, not conv2)."""
    ho, wo = (size + 2 * padding - kernel_size + 1 for size in (height, width))
    width = wo // blocks if wo % blocks == 0 else wo
    return ho % 2 == 0 and width % 2 == 0


def max_pool_2x2_from_pool_layout(y: jax.Array) -> jax.Array:
    """2x2 max-pooling of pool_layout's output as NHWC: maxima of slabs, which XLA:CPU vectorises."""
    y = jnp.maximum(y[:, :, :, :, 0], y[:, :, :, :, 1])  # the window's two columns
    y = jnp.maximum(y[:, :, 0], y[:, :, 1])  # and its two rows
    n, h, blocks, width, c = y.shape
    return y.reshape(n, h, blocks * width, c)


def pool_2x2(x: jax.Array, kind: str) -> jax.Array:
    """nn.avg_pool / nn.max_pool 2x2 as a reshape + reduction, which XLA:CPU fuses (not reduce_window)."""
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))


class ToeplitzBlock(ConvBlock):
    """model.ConvBlock's parameters and function, its convolution as one matrix product."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # nn.Conv's parameters, created in its order (kernel, then bias): the same initial values.
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        padding = self.padding[0][0] if isinstance(self.padding, (tuple, list)) else self.padding
        activation = ACTIVATIONS[self.activation]
        if self.pool != "max":
            return pool_2x2(activation(toeplitz_conv(x, kernel, padding) + bias), self.pool)
        # Max-pooling first: exact (max commutes with +bias and monotone activations), 4x fewer values.
        if can_pool_layout(x.shape[1], x.shape[2], padding, kernel.shape[0]):
            pooled = max_pool_2x2_from_pool_layout(toeplitz_conv(x, kernel, padding, pool_layout=True))
        else:
            pooled = pool_2x2(toeplitz_conv(x, kernel, padding), "max")
        return activation(pooled + bias)
