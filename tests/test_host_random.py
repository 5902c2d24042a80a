"""lenet_jax.host_random gives jax.random's values bit for bit (else every run's numbers move)."""

import jax
import numpy as np
import pytest

from lenet_jax import host_random

SEEDS = [0, 1, 42, 2**31 - 1, 2**31 + 5, 2**40 + 7, -3]  # 64-bit and negative seeds too


@pytest.fixture(params=[True, False], ids=["partitionable", "original"])
def threefry_mode(request):
    """Both layouts of jax's threefry streams (jax_threefry_partitionable)."""
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", request.param)
    yield request.param
    jax.config.update("jax_threefry_partitionable", previous)


def test_keys_split_and_fold_in_equal_jax_random(threefry_mode):
    for seed in SEEDS:
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(host_random.prng_key(seed), key)
        for num in (2, 3):
            np.testing.assert_array_equal(
                host_random.split(host_random.prng_key(seed), num), jax.random.split(key, num)
            )
        for data in (0, 1, 19, 2**32 - 1):
            np.testing.assert_array_equal(host_random.fold_in(key, data), jax.random.fold_in(key, data))


@pytest.mark.parametrize("n", [0, 1, 2, 9, 1000, 60_000])
def test_permutation_equals_jax_random(threefry_mode, n):
    key = jax.random.fold_in(jax.random.PRNGKey(3), 7)
    got = host_random.permutation(key if n % 2 else np.asarray(key), n)  # jax or numpy keys
    assert got.dtype == np.int32 and isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, jax.random.permutation(key, n))


def test_typed_keys_are_left_to_jax_random():
    key = jax.random.key(4)
    np.testing.assert_array_equal(
        jax.random.key_data(host_random.split(key)), jax.random.key_data(jax.random.split(key))
    )
    np.testing.assert_array_equal(host_random.permutation(key, 30), jax.random.permutation(key, 30))


@pytest.mark.parametrize("option", [("jax_random_seed_offset", 9), ("jax_enable_x64", True)])
def test_seeds_under_other_settings_are_left_to_jax_random(option):
    name, value = option
    previous = getattr(jax.config, name)
    jax.config.update(name, value)
    try:
        for seed in (5, 2**40 + 7):
            np.testing.assert_array_equal(host_random.prng_key(seed), jax.random.PRNGKey(seed))
    finally:
        jax.config.update(name, previous)


def test_another_prng_is_left_to_jax_random():
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        key = jax.random.PRNGKey(5)
        np.testing.assert_array_equal(host_random.prng_key(5), key)
        np.testing.assert_array_equal(host_random.split(key), jax.random.split(key))
        np.testing.assert_array_equal(host_random.fold_in(key, 2), jax.random.fold_in(key, 2))
        np.testing.assert_array_equal(host_random.permutation(key, 50), jax.random.permutation(key, 50))
    finally:
        jax.config.update("jax_default_prng_impl", previous)
