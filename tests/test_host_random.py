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


@pytest.mark.parametrize("n", [1, 2, 9, 1000, 60_000])
def test_permutation_equals_jax_random(threefry_mode, n):
    key = jax.random.fold_in(jax.random.PRNGKey(3), 7)
    got = host_random.permutation(np.asarray(key), n)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, jax.random.permutation(key, n))


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
