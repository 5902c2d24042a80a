"""The Toeplitz (matrix-product) convolutions: same values and gradients as lax.conv."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax import toeplitz
from lenet_jax.model import LeNet, init_params
from lenet_jax.toeplitz import ToeplitzBlock, pool_2x2, toeplitz_conv


def xla_conv(x, kernel, padding):
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_pool_layout_holds_the_same_outputs_and_pools_to_the_same_values():
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
    k = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 6))
    plain = toeplitz_conv(x, k, 2)  # (3, 28, 28, 6)
    pooled_layout = toeplitz_conv(x, k, 2, pool_layout=True)  # (n, 14, 2, blocks, 2, 7, c)
    assert pooled_layout.shape == (3, 14, 2, 2, 2, 7, 6)
    for p, b, q, k_ in [(0, 0, 0, 0), (1, 0, 1, 3), (0, 1, 1, 6), (1, 1, 0, 2)]:
        # [n, i, p, b, q, k, o] is the output at row 2i + p, column 14b + 2k + q.
        np.testing.assert_array_equal(pooled_layout[:, :, p, b, q, k_], plain[:, p::2, 14 * b + 2 * k_ + q])
    pooled = toeplitz.max_pool_2x2_from_pool_layout(pooled_layout)
    np.testing.assert_array_equal(pooled, pool_2x2(plain, "max"))


def test_can_pool_layout_needs_even_output_rows_and_block_columns():
    assert toeplitz.can_pool_layout(28, 28, padding=2, kernel_size=5)  # conv1: 28 x (2 blocks of 14)
    assert not toeplitz.can_pool_layout(14, 14, padding=0, kernel_size=5)  # conv2: 10 x (2 blocks of 5)
    assert not toeplitz.can_pool_layout(27, 28, padding=2, kernel_size=5)
    with pytest.raises(ValueError, match="even output height and block width"):
        toeplitz_conv(jnp.zeros((1, 14, 14, 6)), jnp.zeros((5, 5, 6, 16)), 0, pool_layout=True)


def test_toeplitz_conv_equals_lax_conv_with_gradients():
    # An odd shape, kernel and padding; LeNet's own two: test_conv_implementations_give_the_same_model.
    shape, kernel, padding = (2, 9, 7, 3), (3, 3, 3, 4), 1
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(kx, shape)
    k = jax.random.normal(kk, kernel) * 0.2
    ref, ref_vjp = jax.vjp(lambda x, k: xla_conv(x, k, padding), x, k)
    out, out_vjp = jax.vjp(lambda x, k: toeplitz_conv(x, k, padding), x, k)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref.shape)
    chex.assert_trees_all_close(out_vjp(g), ref_vjp(g), rtol=1e-4, atol=1e-4)


MODELS = [("sigmoid", "avg", False), ("relu", "max", False), ("relu", "max", True)]
MODELS += [("sigmoid", "max", False), ("tanh", "max", False)]


@pytest.mark.parametrize("activation,pool,feature_norm", MODELS)
def test_conv_implementations_give_the_same_model(activation, pool, feature_norm):
    """The fast path changes no parameter and, up to float rounding, no result."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    labels = jnp.arange(8) % 10
    options = {"activation": activation, "pool": pool, "feature_norm": feature_norm}
    fast, ref = LeNet(**options, block=ToeplitzBlock), LeNet(**options)
    init = jax.jit(init_params, static_argnums=0)  # jitted: eagerly, each op would compile on its own
    params = init(ref, jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(init(fast, jax.random.PRNGKey(0)), params)  # the same start

    def loss(model, p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), labels).mean()

    apply = jax.jit(lambda model, p: model.apply({"params": p}, x), static_argnums=0)
    np.testing.assert_allclose(apply(fast, params), apply(ref, params), atol=1e-5)
    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    grads, ref_grads = grad(fast, params), grad(ref, params)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-6)
