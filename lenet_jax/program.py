"""The compiled training program: one jitted call that runs several training steps on the device.

JAX decisions, in one place (the pure step itself is `steps.make_train_step`):
- The training images stay on the device as uint8 for the whole run; each call receives only its
  batches' int32 indices and gathers the batches inside the jitted function.
- One call runs `speed.steps_per_call` steps as a lax.scan over that many batches, so per-call
  costs (dispatch, argument handling) are paid once for all of them. The epoch's last call is
  padded with steps that a lax.cond skips: shapes never change, so the program compiles once.
- The state argument is donated: XLA updates params and optimizer state in place.
- State and data are replicated, batches sharded along the batch axis over the devices: XLA
  all-reduces the gradients. With one device the shardings change nothing.
- With augmentation, the call's batches are gathered and augmented by a jit of their own, then
  trained on: same numbers as one jit (a test checks), cheaper on XLA:CPU.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lenet_jax import parallel
from lenet_jax.data import PADDING_INDEX, Split, epoch_order, gather_batch, num_batches
from lenet_jax.errors import ConfigError, out_of_memory_names
from lenet_jax.speed import Speed
from lenet_jax.steps import Metrics, TrainState, augmentation_key

StepFn = Callable[[TrainState, Any], tuple[TrainState, Metrics]]


def scan_steps(
    step_fn: StepFn, state: TrainState, xs: Any, count: jax.Array | int
) -> tuple[TrainState, jax.Array]:
    """Runs step_fn(state, x) for the first `count` rows x of xs (a pytree with a leading steps
    axis) in one lax.scan; returns the state and the per-row losses (float32).

    Rows from `count` on are padding: a lax.cond skips them, leaving the state as it was, loss 0.
    Same numbers as `count` separate calls of step_fn (a test checks, bit for bit on CPU).
    """
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def one(state, row):
        i, x = row

        def real(state):
            state, metrics = step_fn(state, x)
            return state, metrics["loss"].astype(jnp.float32)

        def padding(state):
            return state, jnp.zeros((), jnp.float32)

        return jax.lax.cond(i < count, real, padding, state)

    return jax.lax.scan(one, state, (jnp.arange(steps), xs))


def run_steps(
    step_fn: StepFn, state: TrainState, xs: Any, count: jax.Array | int
) -> tuple[TrainState, jax.Array]:
    """scan_steps, except that a call of one step runs it without any loop: inside a loop
    XLA:CPU gives lax.conv's gradients slow layouts (jax-ml/jax#12868)."""
    if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
        state, metrics = step_fn(state, jax.tree_util.tree_map(lambda x: x[0], xs))
        return state, metrics["loss"].astype(jnp.float32)[None]
    return scan_steps(step_fn, state, xs, count)


class TrainProgram:
    """The jitted training call for one model, optimizer, training split and device mesh.

    `program(state, indices, count) -> (state, losses)` trains on the first `count` rows of
    `indices` (steps_per_call, batch_size); `epoch_calls(epoch)` yields those arguments for every
    call of an epoch, in order. Together they are the whole training loop's device work.
    """

    def __init__(
        self,
        train_step: StepFn,
        speed: Speed,
        train: Split,
        batch_size: int,
        shuffle_key: np.ndarray | jax.Array,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    ):
        self.mesh = parallel.data_mesh()
        parallel.check_batch_size(batch_size, self.mesh)
        if batch_size > len(train):  # one padded batch: memory for nothing
            raise ConfigError(
                f"--batch-size {batch_size} is larger than the {len(train):,} training images: "
                f"use {len(train)} or less"
            )
        self.batch_size, self.num_examples, self.shuffle_key = batch_size, len(train), shuffle_key
        self.steps_per_epoch = num_batches(len(train), batch_size)
        self.steps_per_call = min(speed.steps_per_call, self.steps_per_epoch)
        self.first_call_done: float | None = None  # time.time() when the first call finished
        self._images = parallel.put_replicated(train.images, self.mesh)
        self._labels = parallel.put_replicated(train.labels, self.mesh)
        self._call = self._compile(train_step, speed.compiler_options, augment)

    def _compile(self, train_step: StepFn, compiler_options: dict[str, str], augment) -> Callable:
        replicated = parallel.replicated(self.mesh)
        indices_sharding = parallel.batch_sharded(self.mesh, 2, axis=1)  # (steps, B)
        batches_sharding = {
            name: parallel.batch_sharded(self.mesh, ndim, axis=1)
            for name, ndim in (("image", 5), ("label", 2), ("mask", 2))
        }
        jit = functools.partial(jax.jit, compiler_options=compiler_options)
        gather = jax.vmap(gather_batch, in_axes=(None, None, 0))  # (steps, B) -> (steps, B, ...)

        # The gather happens inside the scan, per step: XLA reads each batch from the uint8
        # images when it is needed instead of materialising all of the call's batches as float.
        @functools.partial(
            jit,
            donate_argnums=0,
            in_shardings=(replicated, replicated, replicated, indices_sharding, replicated),
            out_shardings=(replicated, replicated),
        )
        def train_on_indices(state, images, labels, indices, count):
            step_on_indices = lambda state, rows: train_step(state, gather_batch(images, labels, rows))  # noqa: E731
            return run_steps(step_on_indices, state, indices, count)

        if augment is None:
            return train_on_indices

        # Each batch is augmented with the key its step would draw; lax.map, not vmap: less memory
        # traffic per batch on XLA:CPU.
        @functools.partial(
            jit,
            in_shardings=(replicated, replicated, replicated, indices_sharding),
            out_shardings=batches_sharding,
        )
        def augmented_batches(state, images, labels, indices):
            batches = gather(images, labels, indices)
            keys = jax.vmap(functools.partial(augmentation_key, state))(jnp.arange(len(indices)))
            return {**batches, "image": jax.lax.map(lambda a: augment(*a), (keys, batches["image"]))}

        @functools.partial(
            jit,
            donate_argnums=0,
            in_shardings=(replicated, batches_sharding, replicated),
            out_shardings=(replicated, replicated),
        )
        def train_on_batches(state, batches, count):
            return run_steps(train_step, state, batches, count)

        # No host sync in between: the second call is queued on the first one's output.
        return lambda state, images, labels, indices, count: train_on_batches(
            state, augmented_batches(state, images, labels, indices), count
        )

    def epoch_calls(self, epoch: int) -> Iterator[tuple[Any, int]]:
        """(indices, count) of each call of `epoch`: the epoch's shuffled batches, steps_per_call
        rows a call, the last call padded with rows of PADDING_INDEX (skipped steps)."""
        order = epoch_order(self.shuffle_key, epoch, self.num_examples, self.batch_size)
        per_call = self.steps_per_call
        calls = -(-len(order) // per_call)
        padded = np.full((calls * per_call, order.shape[1]), PADDING_INDEX, np.int32)
        padded[: len(order)] = order
        for call in range(calls):
            count = min(per_call, len(order) - call * per_call)
            rows = padded[call * per_call : (call + 1) * per_call]
            yield parallel.global_batch(rows, self.mesh), count

    def __call__(self, state: TrainState, indices: Any, count: int) -> tuple[TrainState, jax.Array]:
        """Trains on the first `count` batches of `indices`; the losses stay on the device."""
        flags = f"--batch-size (now {self.batch_size}) or --steps-per-call (now {self.steps_per_call})"
        with out_of_memory_names(flags):
            state, losses = self._call(state, self._images, self._labels, indices, np.int32(count))
        if self.first_call_done is None:  # once per run: the first call includes compilation
            jax.block_until_ready(losses)
            self.first_call_done = time.time()
        return state, losses
