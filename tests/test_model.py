import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax.config import Config
from lenet_jax.model import (
    LeNet,
    can_pool_layout,
    count_params,
    init_params,
    max_pool_2x2_from_pool_layout,
    model_from_config,
    pool_2x2,
    resolve_conv_impl,
    toeplitz_conv,
    xla_conv,
)


def test_recipe_model_has_61706_parameters_and_10_logits():
    model = model_from_config(Config())
    params = init_params(model, jax.random.PRNGKey(0))
    assert count_params(params) == 61_706
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes["conv1"]["kernel"] == (5, 5, 1, 6)
    assert shapes["conv2"]["kernel"] == (5, 5, 6, 16)
    assert shapes["dense1"]["kernel"] == (400, 120)
    assert shapes["dense2"]["kernel"] == (120, 84)
    assert shapes["dense3"]["kernel"] == (84, 10)
    logits = model.apply({"params": params}, jnp.zeros((3, 28, 28, 1)))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize(
    "layer,fan_in", [("conv1", 25), ("conv2", 150), ("dense1", 400), ("dense2", 120), ("dense3", 84)]
)
def test_torch_init_is_uniform_within_one_over_sqrt_fan_in(layer, fan_in):
    # Many draws pooled so the statistics are tight: bound, mean 0, variance bound^2 / 3.
    bound = 1 / np.sqrt(fan_in)
    kernels, biases = [], []
    for seed in range(20):
        p = init_params(LeNet(init_scheme="torch"), jax.random.PRNGKey(seed))[layer]
        kernels.append(np.ravel(p["kernel"]))
        biases.append(np.ravel(p["bias"]))
    for values in (np.concatenate(kernels), np.concatenate(biases)):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound  # fills the interval, not a narrower one
        assert abs(values.mean()) < 0.1 * bound
        np.testing.assert_allclose(values.var(), bound**2 / 3, rtol=0.15)


def test_flax_init_has_zero_biases_and_lecun_normal_kernels():
    params = init_params(LeNet(init_scheme="flax"), jax.random.PRNGKey(0))
    assert all(float(jnp.abs(p["bias"]).max()) == 0 for p in params.values())
    kernel = np.ravel(params["dense1"]["kernel"])
    np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(400), rtol=0.1)


def test_options_change_the_function_not_the_parameters():
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    params = init_params(LeNet(), jax.random.PRNGKey(0))
    outputs = {}
    for kwargs in (
        {},
        {"activation": "relu"},
        {"activation": "tanh"},
        {"pool": "max"},
        {"dense_activation": True},
    ):
        model = LeNet(**kwargs)
        assert count_params(init_params(model, jax.random.PRNGKey(0))) == 61_706
        outputs[str(kwargs)] = np.asarray(model.apply({"params": params}, x))
    # The feature LayerNorm adds its scale and offset (16 each) and nothing else.
    normed = LeNet(feature_norm=True)
    normed_params = init_params(normed, jax.random.PRNGKey(0))
    assert count_params(normed_params) == 61_706 + 32
    assert {k: v.shape for k, v in normed_params["feature_norm"].items()} == {"scale": (16,), "bias": (16,)}
    normed_params = {**params, **normed_params}
    outputs["feature_norm"] = np.asarray(normed.apply({"params": normed_params}, x))
    # Per image, no batch statistics: an image's logits do not depend on the rest of the batch.
    alone = normed.apply({"params": normed_params}, x[:1])
    np.testing.assert_allclose(outputs["feature_norm"][:1], alone, rtol=1e-5, atol=1e-6)
    values = list(outputs.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not np.allclose(values[i], values[j])


@pytest.mark.parametrize("impl", ["toeplitz", "xla"])
def test_conv_block_matches_a_hand_computation_of_conv_relu_max_pool(impl):
    # conv1 of one image computed by hand: lax.conv + bias -> relu -> 2x2 max-pool.
    model = LeNet(activation="relu", pool="max", conv_impl=impl)
    params = init_params(model, jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(2), (1, 28, 28, 1))
    conv1 = (
        jax.lax.conv_general_dilated(
            x, params["conv1"]["kernel"], (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + params["conv1"]["bias"]
    )
    expected = jnp.maximum(conv1, 0).reshape(1, 14, 2, 14, 2, 6).max(axis=(2, 4))
    got = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])[1][
        "intermediates"
    ]["conv1"]["__call__"][0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pool_layout_holds_the_same_outputs_and_pools_to_the_same_values():
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
    k = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 6))
    plain = toeplitz_conv(x, k, 2)  # (3, 28, 28, 6)
    pooled_layout = toeplitz_conv(x, k, 2, pool_layout=True)  # (n, 14, 2, blocks, 2, 7, c)
    assert pooled_layout.shape == (3, 14, 2, 2, 2, 7, 6)
    for p, b, q, k_ in [(0, 0, 0, 0), (1, 0, 1, 3), (0, 1, 1, 6), (1, 1, 0, 2)]:
        # [n, i, p, b, q, k, o] is the output at row 2i + p, column 14b + 2k + q.
        np.testing.assert_array_equal(pooled_layout[:, :, p, b, q, k_], plain[:, p::2, 14 * b + 2 * k_ + q])
    np.testing.assert_array_equal(max_pool_2x2_from_pool_layout(pooled_layout), pool_2x2(plain, "max"))


def test_can_pool_layout_needs_even_output_rows_and_block_columns():
    assert can_pool_layout(28, 28, padding=2, kernel_size=5)  # conv1: 28 x (2 blocks of 14)
    assert not can_pool_layout(14, 14, padding=0, kernel_size=5)  # conv2: 10 x (2 blocks of 5)
    assert not can_pool_layout(27, 28, padding=2, kernel_size=5)
    with pytest.raises(ValueError, match="even output height and block width"):
        toeplitz_conv(jnp.zeros((1, 14, 14, 6)), jnp.zeros((5, 5, 6, 16)), 0, pool_layout=True)


@pytest.mark.parametrize(
    "shape,kernel,padding",
    [((3, 28, 28, 1), (5, 5, 1, 6), 2), ((3, 14, 14, 6), (5, 5, 6, 16), 0), ((2, 9, 7, 3), (3, 3, 3, 4), 1)],
)
def test_toeplitz_conv_equals_lax_conv_with_gradients(shape, kernel, padding):
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(kx, shape)
    k = jax.random.normal(kk, kernel) * 0.2
    ref, ref_vjp = jax.vjp(lambda x, k: xla_conv(x, k, padding), x, k)
    out, out_vjp = jax.vjp(lambda x, k: toeplitz_conv(x, k, padding), x, k)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref.shape)
    for a, b in zip(out_vjp(g), ref_vjp(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,reference", [("avg", nn.avg_pool), ("max", nn.max_pool)])
def test_pool_2x2_equals_flax_pooling(kind, reference):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 3))
    np.testing.assert_allclose(pool_2x2(x, kind), reference(x, (2, 2), strides=(2, 2)), rtol=1e-6)


@pytest.mark.parametrize(
    "activation,pool,feature_norm",
    [
        ("sigmoid", "avg", False),
        ("relu", "max", False),
        ("relu", "max", True),
        ("sigmoid", "max", False),
        ("tanh", "max", False),
    ],
)
def test_conv_implementations_give_the_same_model(activation, pool, feature_norm):
    """The fast path changes no parameter and, up to float rounding, no result."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    labels = jnp.arange(8) % 10
    fast, ref = (
        LeNet(activation=activation, pool=pool, feature_norm=feature_norm, conv_impl=impl)
        for impl in ("toeplitz", "xla")
    )
    params = init_params(ref, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(init_params(fast, jax.random.PRNGKey(0))) == (
        jax.tree_util.tree_structure(params)
    )

    def loss(model, p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), labels).mean()

    np.testing.assert_allclose(fast.apply({"params": params}, x), ref.apply({"params": params}, x), atol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(jax.grad(lambda p: loss(fast, p))(params)),
        jax.tree_util.tree_leaves(jax.grad(lambda p: loss(ref, p))(params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_auto_conv_impl_is_toeplitz_on_cpu_and_xla_elsewhere(monkeypatch):
    assert resolve_conv_impl("xla") == "xla" and resolve_conv_impl("toeplitz") == "toeplitz"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert resolve_conv_impl("auto") == "toeplitz"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_conv_impl("auto") == "xla"
