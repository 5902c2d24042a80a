"""The speed machinery's one seam: which fast path the default backend gets.

Three tricks make the training step fast on a CPU, each chosen here per backend (the figures
behind each choice are in docs/performance.md) and each switched off by a config field:
- convolutions as one matrix product (`lenet_jax.toeplitz`): `conv_impl` ('xla' turns it off);
- several training steps per jitted call, a lax.scan (`lenet_jax.program`): `steps_per_call`
  (1 turns it off);
- XLA:CPU compiler options for the training programs: CPU_OPTIONS (off with `xla_defaults()`).
Every trick computes the same function; the tests bound the float differences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp

# XLA:CPU's YNNPACK fusions run this step's small products slower than XLA's own emitters.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# Steps per jitted call by (backend, conv_impl). XLA's convolutions on CPU stay at one step per
# call: inside a loop XLA:CPU picks slow layouts for their gradients (jax-ml/jax#12868).
STEPS_PER_CALL = {("cpu", "toeplitz"): 16, ("cpu", "xla"): 1}
STEPS_PER_CALL_ELSEWHERE = 64  # not measured: no accelerator was lent to this project yet

_use_defaults = False  # set by xla_defaults()


@dataclasses.dataclass(frozen=True)
class Speed:
    """The fast paths a run uses: resolved, so a log or a test can say exactly what ran."""

    conv_impl: str  # 'toeplitz' or 'xla'
    steps_per_call: int
    compiler_options: dict[str, str]


def choose(conv_impl: str = "auto", steps_per_call: int | None = None) -> Speed:
    """The per-backend choice, in one function: 'auto' and None take the measured defaults."""
    conv_impl = resolve_conv_impl(conv_impl)
    backend = jax.default_backend()
    if steps_per_call is None:
        steps_per_call = STEPS_PER_CALL.get((backend, conv_impl), STEPS_PER_CALL_ELSEWHERE)
    return Speed(conv_impl, steps_per_call, training_compiler_options())


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' -> Toeplitz products on CPU, XLA's convolutions (cuDNN on GPU) elsewhere."""
    if conv_impl != "auto":
        return conv_impl
    return "toeplitz" if jax.default_backend() == "cpu" else "xla"


def default_steps_per_call(conv_impl: str) -> int:
    """Training steps per jitted call for the default backend and a resolved conv_impl."""
    return choose(conv_impl).steps_per_call


def training_compiler_options() -> dict[str, str]:
    """The options for the default backend: CPU_OPTIONS on CPU, if this jaxlib knows them."""
    if _use_defaults or jax.default_backend() != "cpu" or not _cpu_options_supported():
        return {}
    return dict(CPU_OPTIONS)


@contextlib.contextmanager
def xla_defaults() -> Iterator[None]:
    """Within it training_compiler_options() is empty: a program built inside keeps XLA's
    defaults for good (the benchmark's comparison uses it)."""
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
        # Lowered from a shape: an array argument would be one more program to compile.
        jax.jit(jnp.sum, compiler_options=CPU_OPTIONS).lower(
            jax.ShapeDtypeStruct((2,), jnp.float32)
        ).compile()
    except Exception as error:  # noqa: BLE001 - any rejection means: do without
        logging.getLogger(__name__).debug("XLA:CPU options %s not supported: %s", CPU_OPTIONS, error)
        return False
    return True
