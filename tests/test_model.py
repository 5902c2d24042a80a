import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax.config import Config
from lenet_jax.data import Split
from lenet_jax.model import ConvBlock, LeNet, count_params, init_params, model_from_config
from lenet_jax.toeplitz import ToeplitzBlock, pool_2x2
from lenet_jax.train import make_trainer

O0 = {"xla_backend_optimization_level": 0}  # init runs once: compiling it fast is what counts


def test_recipe_model_has_61706_parameters_and_10_logits():
    model = model_from_config(Config())
    params = jax.eval_shape(lambda key: init_params(model, key), jax.random.PRNGKey(0))  # no compile
    assert count_params(params) == 61_706
    kernels = [params[name]["kernel"].shape for name in ("conv1", "conv2", "dense1", "dense2", "dense3")]
    assert kernels == [(5, 5, 1, 6), (5, 5, 6, 16), (400, 120), (120, 84), (84, 10)]
    assert jax.eval_shape(model.apply, {"params": params}, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)


@pytest.fixture(scope="module")
def torch_inits():
    # 20 draws in one jitted, vmapped init: the statistics are tight, the compilation one.
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    init = jax.vmap(lambda key: init_params(LeNet(init_scheme="torch"), key))
    return jax.jit(init, compiler_options=O0)(keys)


@pytest.mark.parametrize(
    "layer,fan_in", [("conv1", 25), ("conv2", 150), ("dense1", 400), ("dense2", 120), ("dense3", 84)]
)
def test_torch_init_is_uniform_within_one_over_sqrt_fan_in(torch_inits, layer, fan_in):
    bound = 1 / np.sqrt(fan_in)  # many draws pooled: bound, mean 0, variance bound^2 / 3
    for values in (np.ravel(torch_inits[layer]["kernel"]), np.ravel(torch_inits[layer]["bias"])):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound  # fills the interval, not a narrower one
        assert abs(values.mean()) < 0.1 * bound
        np.testing.assert_allclose(values.var(), bound**2 / 3, rtol=0.15)


def test_flax_init_has_zero_biases_and_lecun_normal_kernels():
    init = jax.jit(init_params, static_argnums=0, compiler_options=O0)
    params = init(LeNet(init_scheme="flax"), jax.random.PRNGKey(0))
    assert all(float(jnp.abs(p["bias"]).max()) == 0 for p in params.values())
    np.testing.assert_allclose(np.std(params["dense1"]["kernel"]), 1 / np.sqrt(400), rtol=0.1)


def test_options_change_the_function_not_the_parameters():
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    params = init_params(LeNet(), jax.random.PRNGKey(0))  # eager: fewer ops
    outputs = {}
    variants = [{}, {"activation": "relu"}, {"activation": "tanh"}, {"pool": "max"}]
    for kwargs in [*variants, {"dense_activation": True}]:
        model = LeNet(**kwargs)
        shapes = jax.eval_shape(lambda k, m=model: init_params(m, k), jax.random.PRNGKey(0))
        assert count_params(shapes) == 61_706
        outputs[str(kwargs)] = np.asarray(model.apply({"params": params}, x))
    normed = LeNet(feature_norm=True)  # adds a LayerNorm's scale and offset (16 each), nothing else
    normed_params = init_params(normed, jax.random.PRNGKey(0))
    assert count_params(normed_params) == 61_706 + 32
    assert {k: v.shape for k, v in normed_params["feature_norm"].items()} == {"scale": (16,), "bias": (16,)}
    normed_params = {**params, **normed_params}
    outputs["feature_norm"] = np.asarray(normed.apply({"params": normed_params}, x))
    # Per image, no batch statistics: an image's logits do not depend on the rest of the batch.
    alone = normed.apply({"params": normed_params}, x[:1])
    np.testing.assert_allclose(outputs["feature_norm"][:1], alone, rtol=1e-5, atol=1e-6)
    for a, b in itertools.combinations(outputs.values(), 2):
        assert not np.allclose(a, b)


@pytest.mark.parametrize("block", [ConvBlock, ToeplitzBlock])
def test_conv_block_matches_a_hand_computation_of_conv_relu_max_pool(block):
    # conv1 of one image computed by hand: lax.conv + bias -> relu -> 2x2 max-pool.
    params = init_params(LeNet(activation="relu", pool="max"), jax.random.PRNGKey(0))["conv1"]
    x = jax.random.uniform(jax.random.PRNGKey(2), (1, 28, 28, 1))
    layout, padding = ("NHWC", "HWIO", "NHWC"), ((2, 2), (2, 2))
    conv1 = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), padding, dimension_numbers=layout)
    expected = jnp.maximum(conv1 + params["bias"], 0).reshape(1, 14, 2, 14, 2, 6).max(axis=(2, 4))
    got = block(6, (5, 5), padding=2, activation="relu", pool="max").apply({"params": params}, x)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kind,reference", [("avg", nn.avg_pool), ("max", nn.max_pool)])
def test_pool_2x2_equals_flax_pooling(kind, reference):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 3))
    np.testing.assert_allclose(pool_2x2(x, kind), reference(x, (2, 2), strides=(2, 2)), rtol=1e-6)


@pytest.mark.parametrize("init_scheme", ["torch", "flax"])
def test_a_run_starts_from_what_model_init_gives_in_a_notebook(init_scheme, tmp_path):
    # LeNet(...).init(jax.random.PRNGKey(seed), x), as a notebook writes it, is the run's start.
    config = Config(init_scheme=init_scheme, seed=3, feature_norm=True)
    train = Split(np.zeros((64, 28, 28, 1), np.uint8), np.zeros(64, np.int32))
    state = make_trainer(config, train, optax.sgd(0.1)).new_state()
    model = LeNet(init_scheme=init_scheme, feature_norm=True)
    expected = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 28, 28, 1)))["params"]
    chex.assert_trees_all_equal(state.params, expected)


def test_conv_impl_of_0_2_warns_and_changes_nothing():
    x = jnp.ones((1, 28, 28, 1))
    params = init_params(LeNet(), jax.random.PRNGKey(0))
    with pytest.warns(DeprecationWarning, match="conv_impl"):
        old = LeNet(conv_impl="xla")
    chex.assert_trees_all_equal(old.apply({"params": params}, x), LeNet().apply({"params": params}, x))
