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


_use_defaults = False  # set by xla_defaults()


def training_compiler_options() -> dict[str, str]:
    """The options for the default backend: CPU_OPTIONS on CPU, if this jaxlib knows them."""
    if _use_defaults or jax.default_backend() != "cpu" or not _cpu_options_supported():
        return {}
    return dict(CPU_OPTIONS)


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
