"""The training loop, `train_and_evaluate(config, workdir)`: per epoch train, evaluate, log, checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import time
import warnings
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from lenet_jax import augment, errors, parallel, speed, steps
from lenet_jax.checkpoints import Checkpoints, describe
from lenet_jax.config import Config
from lenet_jax.data import Split, epoch_calls, gather_batch, load_dataset
from lenet_jax.evaluation import Evaluator, evaluate_state
from lenet_jax.model import model_from_config
from lenet_jax.monitor import LossMonitor, StopSignals
from lenet_jax.optimizers import build_optimizer, current_learning_rate
from lenet_jax.provenance import provenance
from lenet_jax.resume import start_state
from lenet_jax.run_log import RunLog, format_epoch
from lenet_jax.workdir import RunGuard, set_aside, workdir_lock


@dataclasses.dataclass
class TrainResult:
    """What a run ends with: the final state and the per-epoch metric rows of the whole run."""

    state: steps.TrainState
    metrics: list[dict[str, Any]]


@dataclasses.dataclass
class Trainer:
    """What a run sets up once (`make_trainer`): model, optimizer, jitted training call, data on device."""

    config: Config
    model: nn.Module
    optimizer: optax.GradientTransformation
    from_python: bool  # the optimizer was passed in, not built from the config's fields
    evaluator: Evaluator
    key: jax.Array  # PRNGKey(seed): the params (as model.init(key) in a notebook), then the step rng
    shuffle_key: jax.Array  # each epoch's order
    steps_per_epoch: int
    steps_per_call: int
    mesh: Any
    images: jax.Array
    labels: jax.Array
    call: Any  # jitted (state, images, labels, indices (steps, B), count) -> (state, losses)

    def new_state(self) -> steps.TrainState:
        """A fresh state from the seed, replicated over the run's devices."""
        ema = self.config.averages_weights
        with speed.unrolled_threefry(self.config.speed):  # init alone: speed says why
            state = steps.create_train_state(self.model, self.optimizer, self.key, ema)
        return parallel.put_replicated(state, self.mesh)

    def abstract_state(self) -> steps.TrainState:
        """Shapes, dtypes and shardings of the state, without running init (a restore target)."""
        ema = self.config.averages_weights
        abstract = steps.create_train_state.eval_shape(self.model, self.optimizer, self.key, ema)
        return parallel.with_sharding(abstract, parallel.replicated(self.mesh))

    def epoch_calls(self, epoch: int):
        """(indices, count) of each training call of `epoch`, in order."""
        size, per_call = self.config.batch_size, self.steps_per_call
        for rows, count in epoch_calls(self.shuffle_key, epoch, len(self.labels), size, per_call):
            yield parallel.global_batch(rows, self.mesh), count

    def train_call(self, state: steps.TrainState, indices: Any, count: int) -> tuple[Any, jax.Array]:
        """Trains on the first `count` batches of `indices`; the losses stay on the device."""
        with errors.out_of_memory_names("batch_size", self.config.batch_size):
            return self.call(state, self.images, self.labels, indices, np.int32(count))

    @functools.cached_property  # once a run: a Python optimizer's costs an eval_shape of init
    def record(self) -> dict[str, Any]:
        """What config.json and every checkpoint say about the run, besides its metrics."""
        source = {"kind": "config"}
        if self.from_python:  # the structure of its state: a repr of optax functions says nothing
            source = {"kind": "python", "state": describe(self.abstract_state().opt_state)}
        config = self.config.to_record(self.from_python)
        return {"config": config, "optimizer_source": source, "provenance": provenance()}

    @property
    def program(self) -> Trainer:
        """0.2's `trainer.program`, one more version: the trainer itself (`epoch_calls`, calls)."""
        message = "Trainer.program is deprecated: use trainer.epoch_calls and trainer.train_call"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return self

    __call__ = train_call  # 0.2's program(state, indices, count)

    def diverged_hint(self) -> str:
        if self.from_python:
            return "lower the learning rate of the optimizer passed to train_and_evaluate"
        clip = " or add --grad-clip 1.0" if self.config.grad_clip is None else ""
        return f"lower --lr (now {self.config.lr:g}){clip}"


def plain_train_call(train_step, mesh) -> Any:
    """One step per jitted call `(state, images, labels, indices (1, B), count)`, the batch sharded."""
    replicated, by_batch = parallel.replicated(mesh), parallel.batch_sharded(mesh, 2)
    shardings = (replicated, replicated, replicated, by_batch, replicated)

    @functools.partial(jax.jit, donate_argnums=0, in_shardings=shardings, out_shardings=replicated)
    def train_call(state, images, labels, indices, count):
        state, metrics = train_step(state, gather_batch(images, labels, indices[0]))
        return state, metrics["loss"][None]

    return train_call


@functools.partial(jax.jit, static_argnums=0)  # one small program, not several eager ones
def root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(PRNGKey(seed): params and step rng, its split's second key: each epoch's order), as 0.1, 0.2."""
    key = jax.random.PRNGKey(seed)
    return key, jax.random.split(key)[1]


def make_trainer(
    config: Config,
    train: Split,
    optimizer: optax.GradientTransformation | None = None,
    steps_per_call: int | None = None,
) -> Trainer:
    """The one set-up of a run; optimizer None builds the config's, steps_per_call None the backend's."""
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    if config.batch_size > len(train):  # one padded batch: memory for nothing
        size, wanted = len(train), config.batch_size
        message = f"batch_size {wanted} is larger than the {size:,} training images: use {size} or less"
        raise errors.ConfigError(message, field="batch_size")
    steps_per_epoch = -(-len(train) // config.batch_size)
    model = model_from_config(config, speed.conv_block(config.speed))
    from_python = optimizer is not None
    if optimizer is None:
        optimizer = build_optimizer(config, steps_per_epoch)
    augmentation = augment.make_augment(augment.augmentation_from_config(config))
    per_call = speed.steps_per_call(config.speed, steps_per_epoch, steps_per_call)
    options = {"label_smoothing": config.label_smoothing, "ema_decay": config.ema_decay}
    if config.speed == "plain":  # augmentation inside the step
        call = plain_train_call(steps.make_train_step(model, optimizer, augmentation, **options), mesh)
    else:
        train_step = steps.make_train_step(model, optimizer, **options)  # augmentation: speed's
        call = speed.train_call(train_step, augmentation, mesh, per_call, config.speed)
    key, shuffle_key = root_keys(config.seed)
    groups = speed.eval_groups(config.speed, config.eval_batch_size)
    evaluator = Evaluator(model, config.eval_batch_size, groups)
    images, labels = (parallel.put_replicated(array, mesh) for array in (train.images, train.labels))
    fields = (evaluator, key, shuffle_key, steps_per_epoch, per_call, mesh, images, labels, call)
    return Trainer(config, model, optimizer, from_python, *fields)


def train_epoch(trainer: Trainer, state: steps.TrainState, epoch: int, step: int, log=None, stop=None):
    """(state, losses, seconds) of one epoch; log(step, loss) every log_every steps, stop between calls."""
    every, hint, show = trainer.config.log_every, trainer.diverged_hint(), log is not None
    start = time.perf_counter()
    with LossMonitor(step, epoch, every, hint, trainer.steps_per_epoch, show) as monitor:
        for indices, count in trainer.epoch_calls(epoch):
            if stop is not None:
                stop.check(monitor.step, epoch)  # between calls, never inside one
            state, losses = trainer.train_call(state, indices, count)  # `count` steps on the device
            logged = monitor.add(losses, count)  # read from the device only when a step is logged
            for logged_step, loss in logged if show else ():
                log(logged_step, loss)
        monitor.flush()
        jax.block_until_ready(state)
    return state, monitor.losses, time.perf_counter() - start


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    optimizer: optax.GradientTransformation | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = True,
    replace: bool = False,
) -> TrainResult:
    """Trains LeNet as `config` says, evaluating and checkpointing every epoch in workdir.

    resume: from the newest checkpoint; else refuse a workdir with checkpoints unless `replace`
    (the old run set aside until the first new checkpoint). Errors keep the last checkpoint.
    """
    main = parallel.is_main_process()  # only process 0 prints and writes logs
    say = print if main else (lambda *args, **kwargs: None)
    # On failure the guard puts an old run back; one process per workdir; signals stop between calls.
    with (
        RunGuard(workdir) as guard,
        workdir_lock(guard.workdir, main),
        StopSignals(lambda: guard.saved) as stop,
    ):
        workdir = guard.workdir
        # The data first: a bad --data-dir fails before anything with a thread (orbax) is opened.
        cache = speed.array_cache(config.speed)
        dataset = load_dataset(data_dir, config.validation_size, config.train_size, array_cache=cache)
        trainer = make_trainer(config, dataset.train, optimizer)
        say(f"Data {dataset.describe()}", flush=True)
        if replace and not resume and main:
            guard.aside = set_aside(workdir)  # only now that the data and the settings are checked
        parallel.barrier("workdir ready")
        with Checkpoints(workdir, keep=config.keep) as checkpoints:
            state, rows = start_state(trainer, checkpoints, dataset.source, resume, say)
            guard.saved = start_epoch = max((row["epoch"] for row in rows), default=0)
            step = int(parallel.host_value(state.step))  # the host's copy: reading state.step syncs
            # The logs: damaged ones set aside, config.json written, metrics.jsonl completed.
            record = trainer.record
            with RunLog(workdir, step, start_epoch, rows, enabled=main, record=record, note=say) as log:
                log_loss = log.train_loss if main else None
                for epoch in range(start_epoch + 1, config.epochs + 1):
                    state, losses, seconds = train_epoch(trainer, state, epoch, step, log_loss, stop)
                    lr = parallel.host_value(current_learning_rate(state.opt_state))
                    step = int(parallel.host_value(state.step))
                    row = {
                        "epoch": epoch,
                        "step": step,
                        "train_loss": float(np.mean(losses)),  # mean of the per-batch mean losses
                        "learning_rate": None if lr is None else float(lr),
                        "train_seconds": seconds,
                        "images_per_second": len(dataset.train) / seconds,
                        **evaluate_state(trainer.evaluator, state, dataset),
                    }
                    say(format_epoch(row), flush=True)
                    # The checkpoint first: resume repairs the logs from its meta after a crash.
                    meta = {"epoch": epoch, "step": step, "dataset": dataset.source, "metrics": row}
                    checkpoints.save(epoch, state, {**meta, **record})
                    guard.checkpointed(epoch)  # the old run of --restart --force can go now
                    log.log_epoch(row)
    return TrainResult(state=state, metrics=log.rows)


def __getattr__(name: str) -> Any:
    """lenet-jax 0.1's names here, one more version: they live in lenet_jax.workdir."""
    if name in ("clear_run", "prepare_workdir"):
        message = f"lenet_jax.train.{name} is deprecated: use lenet_jax.workdir.{name}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("lenet_jax.workdir"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
