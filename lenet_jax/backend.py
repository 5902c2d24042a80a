"""Per-backend XLA compiler options for the jitted training programs.

Chosen by measurement (README, Performance), applied where the training step is jitted
(`jax.jit(..., compiler_options=training_compiler_options())`), and nowhere else. Evaluation and
prediction keep XLA's defaults: their forward passes over 1,024-image groups measured faster
with them (recipe model: 17.7k against 14.7k test images/s).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp

# XLA:CPU (jaxlib 0.10) hands dots and reductions to YNNPACK "fusions" by default. In the
# training step (products of at most 7,168 x 90 x 84, their gradients, small reductions) they
# measured slower than XLA's own emitters: the fast preset's step at batch 128 14.4 -> 10.7 ms,
# the recipe's 6.4 -> 5.7 ms (2-core AMD EPYC, interleaved medians).
# The empty list switches them off; the arithmetic is the same, only the summation order of a
# product may differ (tests bound the difference).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


# Training steps per jitted call (Config.steps_per_call's default), by backend and convolution.
# CPU, Toeplitz convolutions: a lax.scan over 16 batches per call measured 13-20% less time per
# step than one call per step (fast preset 6.8 -> 5.8 ms, recipe 6.8 -> 5.9 ms at batch 64; 8, 16,
# 32 and 64 steps within noise of each other), with the same numbers bit for bit: the per-call
# costs (dispatch, argument handling, the host's index transfer) are paid once per 16 steps.
# CPU, XLA's convolutions: 1, no loop: inside a loop XLA:CPU gives the gradient convolutions a
# layout that makes them ~5-40x slower (jax-ml/jax#12868).
# Other backends: 64, not measured here (no GPU was lent); per-call overhead weighs more next
# to a GPU's sub-millisecond LeNet step, and a long scan is the usual choice there.
STEPS_PER_CALL = {("cpu", "toeplitz"): 16, ("cpu", "xla"): 1}
STEPS_PER_CALL_ELSEWHERE = 64

_use_defaults = False  # set by xla_defaults()


def training_compiler_options() -> dict[str, str]:
    """The options for the default backend: CPU_OPTIONS on CPU, if this jaxlib knows them."""
    if _use_defaults or jax.default_backend() != "cpu" or not _cpu_options_supported():
        return {}
    return dict(CPU_OPTIONS)


def default_steps_per_call(conv_impl: str) -> int:
    """Training steps per jitted call for the default backend and a resolved conv_impl."""
    backend = jax.default_backend()
    if backend != "cpu":
        return STEPS_PER_CALL_ELSEWHERE
    return STEPS_PER_CALL[(backend, conv_impl)]


@contextlib.contextmanager
def xla_defaults() -> Iterator[None]:
    """Within it training_compiler_options() is empty: an EpochRunner set up inside keeps XLA's
    defaults for good. The benchmark's comparison (--jax-xla-defaults) uses it."""
    global _use_defaults
    previous, _use_defaults = _use_defaults, True
    try:
        yield
    finally:
        _use_defaults = previous


@functools.cache
def _cpu_options_supported() -> bool:
    """The option is experimental in XLA: a jaxlib that does not know it rejects it at compile
    time, so it is tried once on a tiny program and dropped (with a debug log) if rejected."""
    try:
        jax.jit(jnp.sum, compiler_options=CPU_OPTIONS).lower(jnp.ones(2)).compile()
    except Exception as error:  # noqa: BLE001 - any rejection means: do without
        logging.getLogger(__name__).debug("XLA:CPU options %s not supported: %s", CPU_OPTIONS, error)
        return False
    return True
