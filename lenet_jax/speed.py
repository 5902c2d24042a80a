"""Every speed trick, each named once with why; `--speed plain` (the tutorial's program, the same
function) turns them off, except the process-wide 8, 10 and 12, whatever the flag. docs/performance.md."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from lenet_jax import parallel
from lenet_jax.data import gather_batch
from lenet_jax.model import ConvBlock
from lenet_jax.steps import augmentation_key
from lenet_jax.toeplitz import ToeplitzBlock

SPEEDS = ("auto", "plain")

# The per-backend choices of "auto". `python -m benchmarks device-check` prints a row to put here.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"conv": "toeplitz", "steps_per_call": 16, "measured": "2-vCPU Xeon, docs/performance.md"},
    "gpu": {"conv": "xla", "steps_per_call": 64, "measured": "not measured"},
}


def defaults() -> dict[str, Any]:
    """The DEFAULTS row of the default backend (TPU, Metal...: the GPU's, not measured either)."""
    return DEFAULTS.get(jax.default_backend(), DEFAULTS["gpu"])


# 1. Convolutions as matrix products (lenet_jax.toeplitz): XLA:CPU is slow on LeNet's tiny channels.
def conv_block(speed: str) -> type:
    """The conv block class LeNet is built with: model.ConvBlock, or its Toeplitz drop-in."""
    return ToeplitzBlock if speed == "auto" and defaults()["conv"] == "toeplitz" else ConvBlock


# 2. Several training steps per jitted call, a lax.scan: dispatch is paid once per call, not per step.
def steps_per_call(speed: str, steps_per_epoch: int, override: int | None = None) -> int:
    """Training steps per jitted call: 1 when plain, else the backend's (or override)."""
    return 1 if speed == "plain" else max(1, min(override or defaults()["steps_per_call"], steps_per_epoch))


def run_steps(step_fn: Callable, state: Any, xs: Any, count: jax.Array | int) -> tuple[Any, jax.Array]:
    """(state, losses) of step_fn over the first `count` rows of xs in a lax.scan; padding: loss 0."""
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if steps == 1:  # 3. one step without a loop: in one XLA:CPU gives lax.conv's gradients slow layouts
        state, metrics = step_fn(state, jax.tree_util.tree_map(lambda x: x[0], xs))
        return state, metrics["loss"].astype(jnp.float32)[None]

    def one(state, row):
        i, x = row

        def real(state):
            state, metrics = step_fn(state, x)
            return state, metrics["loss"].astype(jnp.float32)

        return jax.lax.cond(i < count, real, lambda state: (state, jnp.zeros((), jnp.float32)), state)

    return jax.lax.scan(one, state, (jnp.arange(steps), xs))


# 4. XLA:CPU options: its YNNPACK fusions run this step's small products slower than XLA's emitters.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(speed: str) -> dict[str, str]:
    """CPU_OPTIONS on a CPU when auto, if this jaxlib knows them (they are experimental); else {}."""
    wanted = speed != "plain" and jax.default_backend() == "cpu"
    return dict(CPU_OPTIONS) if wanted and _cpu_options_supported() else {}


@functools.cache
def _cpu_options_supported() -> bool:
    try:  # a jaxlib that does not know them rejects them at compile time
        spec = jax.ShapeDtypeStruct((2,), jnp.float32)  # lowered from a shape: nothing to run
        jax.jit(jnp.sum, compiler_options=CPU_OPTIONS).lower(spec).compile()
    except Exception as error:  # noqa: BLE001 - any rejection means: do without
        logging.getLogger(__name__).debug("XLA:CPU options %s not supported: %s", CPU_OPTIONS, error)
        return False
    return True


def train_call(train_step: Callable, augment: Callable | None, mesh: Any, steps: int, speed: str) -> Callable:
    """The jitted `(state, images, labels, indices (steps, B), count)` of "auto" (tricks 2-5)."""
    replicated, per_step = parallel.replicated(mesh), parallel.batch_sharded(mesh, 2, axis=1)  # (steps, B)
    ndims = {"image": 5, "label": 2, "mask": 2}
    batches_sharding = {name: parallel.batch_sharded(mesh, ndim, axis=1) for name, ndim in ndims.items()}
    jit = functools.partial(jax.jit, compiler_options=compiler_options(speed))
    training = functools.partial(jit, donate_argnums=0, out_shardings=(replicated, replicated))
    on_indices = (replicated, replicated, replicated, per_step)  # state, images, labels, indices

    # The gather happens inside the scan, per step: no float copy of all the call's batches.
    @functools.partial(training, in_shardings=(*on_indices, replicated))
    def train_on_indices(state, images, labels, indices, count):
        step_on_indices = lambda s, rows: train_step(s, gather_batch(images, labels, rows))  # noqa: E731
        return run_steps(step_on_indices, state, indices, count)

    if augment is None:
        return train_on_indices

    # 5. Augmentation jitted on its own, before the training call: cheaper on XLA:CPU than inside.
    @functools.partial(jit, in_shardings=on_indices, out_shardings=batches_sharding)
    def augmented_batches(state, images, labels, indices):
        batches = jax.vmap(gather_batch, in_axes=(None, None, 0))(images, labels, indices)
        keys = jax.vmap(functools.partial(augmentation_key, state))(jnp.arange(len(indices)))
        return {**batches, "image": jax.lax.map(lambda a: augment(*a), (keys, batches["image"]))}

    @functools.partial(training, in_shardings=(replicated, batches_sharding, replicated))
    def train_on_batches(state, batches, count):
        return run_steps(train_step, state, batches, count)

    # No host sync in between: the second call is queued on the first one's output.
    return lambda state, images, labels, indices, count: train_on_batches(
        state, augmented_batches(state, images, labels, indices), count
    )


# 6. Evaluation batches grouped into device calls of ~256 images: fewer dispatches (1024 measured
#    slower and 190 MB more peak memory: docs/performance.md), metrics per batch.
EVAL_GROUP_IMAGES = 256


def eval_groups(speed: str, batch_size: int) -> int:
    return 1 if speed == "plain" else max(1, EVAL_GROUP_IMAGES // batch_size)


def grouped(eval_step: Callable) -> Callable:
    """eval_step over a leading group axis of the batch: metrics per batch, shape (groups,)."""
    return jax.vmap(eval_step, in_axes=(None, 0))


# 7. XLA's persistent compilation cache ($LENET_JAX_CACHE_DIR; "": off): only a first launch compiles.
CACHE_DIR_ENV = "LENET_JAX_CACHE_DIR"


def enable_compilation_cache(speed: str = "auto") -> None:
    """Keeps compiled programs on disk (not when plain)."""
    path = os.environ.get(CACHE_DIR_ENV, os.path.expanduser("~/.cache/lenet_jax/xla"))
    if path and speed == "auto":
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


# 8. Two glibc malloc arenas, not 8 per core for XLA's and orbax's threads: lower peak RSS, same time.
MALLOC_ARENAS = 2
_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3  # mallopt's parameter numbers, from glibc's malloc.h


def limit_malloc_arenas() -> None:
    """Caps glibc's malloc arenas for threads created from now on; no-op off glibc or $MALLOC_ARENA_MAX."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _mallopt(parameter: int, value: int) -> None:
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):  # no mallopt in this C library: keep its default
            ctypes.CDLL(None).mallopt(parameter, value)


# 12. glibc's mmap threshold fixed at 128 KiB (evaluate, predict): freed XLA buffers returned, -20 MB.
def fix_mmap_threshold() -> None:
    """No-op off glibc or where $MALLOC_MMAP_THRESHOLD_ sets it; not for training, whose steps it slows."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


# 9. The splits cached as .npz beside tfds's data (lenet_jax.mnist_idx): milliseconds, not seconds.
def array_cache(speed: str) -> bool:
    return speed == "auto"


# 10. tensorboardX imported without torch (lenet_jax.run_log): seconds and ~100 MB never needed.
@contextlib.contextmanager
def torch_blocked() -> Iterator[None]:
    """Within it `import torch` fails fast, as if absent; importable again after."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked:
            del sys.modules["torch"]


# 11. Init compiled with jax's unrolled threefry (jax PR #37872): XLA:CPU compiles the rolled loops
#     of its many draws ~1 s slower cold; same bits. Only init: the rolled ones run the steps faster.
@contextlib.contextmanager
def unrolled_threefry(speed: str) -> Iterator[None]:
    """Within it, jax.random's threefry hash is lowered unrolled on the CPU (not when plain)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry

        rolled, unrolled = threefry._threefry2x32_cpu_lowering_rule, threefry._threefry2x32_lowering_rule
    except (ImportError, AttributeError):  # internals moved: jax's own lowering, the same bits
        speed = "plain"
    if speed != "auto":
        yield
        return
    mlir.register_lowering(threefry.threefry2x32_p, unrolled, platform="cpu")
    try:
        yield
    finally:
        mlir.register_lowering(threefry.threefry2x32_p, rolled, platform="cpu")
