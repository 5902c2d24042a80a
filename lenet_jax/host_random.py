"""jax.random's threefry keys and permutations, computed with numpy on the host.

The training loop needs random numbers on the host twice: the root keys (`split(PRNGKey(seed))`)
and each epoch's order (`permutation(fold_in(key, epoch), n)`). Through jax.random each is a
program that XLA compiles before it runs once, ~0.7 s of a cold start between them
(docs/performance.md), for work that numpy does in milliseconds. These functions return the same
uint32 values bit for bit (tests/test_host_random.py compares them with jax.random over seeds,
epochs and sizes, in both settings of `jax_threefry_partitionable`). For anything else (another
`jax_default_prng_impl`, typed keys, and for seeds also 64-bit types or a seed offset) they call
jax.random itself and return what it returns.
"""

from __future__ import annotations

import jax
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _seeds_threefry() -> bool:
    """Whether jax.random.PRNGKey(seed) would be the raw threefry2x32 key prng_key computes."""
    offset = getattr(jax.config, "jax_random_seed_offset", 0)
    return _default_threefry() and not jax.config.jax_enable_x64 and not offset


def _default_threefry() -> bool:
    """Whether jax.random reads a raw uint32 key as a threefry2x32 key (its default)."""
    custom = getattr(jax.config, "jax_enable_custom_prng", False)  # typed keys everywhere
    return jax.config.jax_default_prng_impl == "threefry2x32" and not custom


def _raw_threefry(key) -> np.ndarray | None:
    """A raw threefry2x32 key as numpy uint32[2]; None for a key these functions leave to
    jax.random (a typed key, or a raw key of another implementation)."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return None
    key = np.asarray(key)  # a jax.Array key is read once, not indexed on the device
    if key.shape != (2,) or key.dtype != np.uint32 or not _default_threefry():
        return None
    return key


def _partitionable() -> bool:
    return bool(jax.config.jax_threefry_partitionable)


def _threefry2x32(key: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs (x1, x2) under `key`, uint32."""
    k1, k2 = (np.uint32(k) for k in key)
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1.astype(np.uint32) + ks[0], x2.astype(np.uint32) + ks[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(rotation)) | (x2 >> np.uint32(32 - rotation))
            x2 = x1 ^ x2
        x1 = x1 + ks[(block + 1) % 3]
        x2 = x2 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def _threefry_counts(key: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """jax's threefry_2x32(key, counts): the counts' two halves hashed as pairs, concatenated."""
    flat = counts.ravel()
    odd = flat.size % 2
    if odd:
        flat = np.concatenate([flat, np.zeros(1, np.uint32)])
    y1, y2 = _threefry2x32(key, *np.split(flat, 2))
    out = np.concatenate([y1, y2])
    return (out[:-1] if odd else out).reshape(counts.shape)


def _random_bits32(key: np.ndarray, size: int) -> np.ndarray:
    """jax.random.bits(key, (size,), uint32) for a raw threefry key."""
    if _partitionable():
        y1, y2 = _threefry2x32(key, np.zeros(size, np.uint32), np.arange(size, dtype=np.uint32))
        return y1 ^ y2
    return _threefry_counts(key, np.arange(size, dtype=np.uint32))


def prng_key(seed: int):
    """jax.random.PRNGKey(seed): uint32 [0, seed mod 2**32] (JAX without 64-bit types takes a
    seed's low 32 bits)."""
    if not _seeds_threefry():
        return jax.random.PRNGKey(seed)
    return np.array([0, int(seed) % 2**32], np.uint32)


def split(key, num: int = 2):
    """jax.random.split(key, num): (num, 2) uint32."""
    raw = _raw_threefry(key)
    if raw is None:
        return jax.random.split(key, num)
    if _partitionable():  # the keys are the hashes of the pairs (0, i)
        y1, y2 = _threefry2x32(raw, np.zeros(num, np.uint32), np.arange(num, dtype=np.uint32))
        return np.stack([y1, y2], axis=1)
    return _threefry_counts(raw, np.arange(2 * num, dtype=np.uint32)).reshape(num, 2)


def fold_in(key, data: int):
    """jax.random.fold_in(key, data): uint32[2]."""
    raw = _raw_threefry(key)
    if raw is None:
        return jax.random.fold_in(key, data)
    return _threefry_counts(raw, np.array([0, int(data) % 2**32], np.uint32))


def permutation(key, n: int) -> np.ndarray:
    """jax.random.permutation(key, n) as int32 numpy: jax's rounds of stable sorts by fresh
    32-bit random keys (as many rounds as jax makes for n)."""
    raw = _raw_threefry(key)
    if raw is None:
        return np.asarray(jax.random.permutation(key, n), np.int32)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    x = np.arange(n, dtype=np.int32)
    for _ in range(rounds):
        raw, subkey = split(raw)
        x = x[np.argsort(_random_bits32(subkey, n), kind="stable")]
    return x
