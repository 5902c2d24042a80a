"""The training loop: `train_and_evaluate(config, workdir)`.

Per epoch: shuffle (from the seed and the epoch number), train on every batch, evaluate on the
test set (and the validation split if any), log, checkpoint. A workdir that already holds
checkpoints is resumed from the newest one.

Where the JAX decisions are: the pure steps in `lenet_jax.steps`; what is jitted, donated and
kept on the device in `lenet_jax.program`; the per-backend fast paths in `lenet_jax.speed`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from typing import Any

import jax
import numpy as np
import optax

from lenet_jax import host_random, parallel
from lenet_jax.augment import augmentation_from_config, make_augment
from lenet_jax.checkpoints import Checkpoints, describe
from lenet_jax.config import Config
from lenet_jax.data import Dataset, Split, load_dataset, num_batches
from lenet_jax.errors import DivergedError
from lenet_jax.evaluation import Evaluator, evaluate_state
from lenet_jax.model import LeNet, model_from_config
from lenet_jax.monitor import LossMonitor, Progress, Stopped, StopSignals
from lenet_jax.optimizers import build_optimizer, current_learning_rate
from lenet_jax.program import TrainProgram
from lenet_jax.provenance import provenance
from lenet_jax.resume import start_state
from lenet_jax.run_log import TAG_TRAIN_LOSS, RunLog, format_epoch
from lenet_jax.speed import choose
from lenet_jax.steps import TrainState, create_train_state, make_train_step
from lenet_jax.workdir import (  # noqa: F401 - clear_run, prepare_workdir: re-exported (0.1.0)
    RunGuard,
    check_resumable,
    clear_run,
    is_row,
    prepare_workdir,
    read_metrics,
    salvage_logs,
    workdir_lock,
    write_config,
)


@dataclasses.dataclass
class TrainResult:
    """What a run ends with: the final state and the per-epoch metric rows of the whole run."""

    state: TrainState
    metrics: list[dict[str, Any]]


@dataclasses.dataclass
class Trainer:
    """What a run sets up once (`make_trainer`, used by the loop, the benchmark and the tests):
    the model, the optimizer, the compiled training program, the evaluator."""

    config: Config
    model: LeNet
    optimizer: optax.GradientTransformation
    from_python: bool  # the optimizer was passed in, not built from the config's fields
    program: TrainProgram
    evaluator: Evaluator
    init_key: np.ndarray | jax.Array  # a raw key (numpy uint32[2] with threefry)

    def new_state(self) -> TrainState:
        """A fresh state from the seed, replicated over the run's devices."""
        state = create_train_state(self.model, self.optimizer, self.init_key, self.config.averages_weights)
        return parallel.put_replicated(state, self.program.mesh)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without running init (a restore target)."""
        ema = self.config.averages_weights
        abstract = create_train_state.eval_shape(self.model, self.optimizer, self.init_key, ema)
        return parallel.with_sharding(abstract, parallel.replicated(self.program.mesh))

    @functools.cached_property  # once a run: a Python optimizer's costs an eval_shape of init
    def record(self) -> dict[str, Any]:
        """What config.json and every checkpoint say about the run, besides its metrics."""
        source = {"kind": "config"}
        if self.from_python:  # the structure of its state: a repr of optax functions says nothing
            source = {"kind": "python", "state": describe(self.abstract_state().opt_state)}
        return {"config": self.config.to_record(self.from_python), "optimizer_source": source}

    def diverged_hint(self) -> str:
        if self.from_python:
            return "lower the learning rate of the optimizer passed to train_and_evaluate"
        clip = " or add --grad-clip 1.0" if self.config.grad_clip is None else ""
        return f"lower --lr (now {self.config.lr:g}){clip}"


def make_trainer(
    config: Config, train: Split, optimizer: optax.GradientTransformation | None = None
) -> Trainer:
    """The one set-up of a run. optimizer: any optax transformation; None builds the config's."""
    model = model_from_config(config)
    from_python = optimizer is not None
    if optimizer is None:
        optimizer = build_optimizer(config, num_batches(len(train), config.batch_size))
    # All randomness flows from the seed: init_key -> params and per-step rng, shuffle_key -> each
    # epoch's order. = jax.random.split(jax.random.PRNGKey(seed)), by numpy: nothing to compile.
    init_key, shuffle_key = host_random.split(host_random.prng_key(config.seed))
    train_step = make_train_step(
        model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
    )
    augment = make_augment(augmentation_from_config(config))
    speed = choose(config.conv_impl, config.steps_per_call)  # the per-backend fast paths
    program = TrainProgram(train_step, speed, train, config.batch_size, shuffle_key, augment)
    evaluator = Evaluator(model, config.eval_batch_size)
    return Trainer(config, model, optimizer, from_python, program, evaluator, init_key)


def train_epoch(trainer: Trainer, state: TrainState, epoch: int, step: int, log=None, stop=None):
    """Trains one epoch from `state` (at step `step`); returns (state, losses, seconds).

    log(step, loss) gets every config.log_every-th step's loss (also printed, with a progress
    bar on a terminal); without it the epoch runs silently. stop (StopSignals) is checked
    between calls. Raises DivergedError on a non-finite loss.
    """
    program = trainer.program
    monitor = LossMonitor(step, epoch, trainer.config.log_every, trainer.diverged_hint())
    start = time.perf_counter()
    with Progress(program.steps_per_epoch, epoch, enabled=log is not None) as progress:
        for indices, count in program.epoch_calls(epoch):
            if stop is not None and stop.received is not None:  # between calls, never inside one
                raise Stopped(stop.received, monitor.step)
            state, losses = program(state, indices, count)  # runs `count` steps on the device
            progress.update(count)
            for logged_step, loss in monitor.add(losses, count):
                progress.write(f"step {logged_step}: train loss {loss:.4f}")
                if log is not None:
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

    optimizer: any optax GradientTransformation; None builds the one the config names.
    data_dir: folder of MNIST-format IDX files; None uses $LENET_DATA_DIR, else tfds download.
    resume: continue from the newest checkpoint in workdir; False refuses a workdir that holds
    checkpoints, unless replace=True: then, once data and settings are checked, the old run is
    set aside, and deleted when the new run has saved its first checkpoint (put back if it fails
    before). Raises DivergedError on a NaN/inf loss and TrainingInterrupted on SIGINT/SIGTERM;
    the last complete checkpoint stays usable either way.
    """
    main = parallel.is_main_process()  # only process 0 prints and writes logs
    say = print if main else (lambda *args, **kwargs: None)
    # RunGuard: a failure puts back, cleans up, says what is intact; the lock: one process per workdir
    with RunGuard(workdir) as guard, workdir_lock(guard.workdir, main):
        workdir = guard.workdir
        # The data first: a bad --data-dir fails before anything with a thread (orbax) is opened.
        dataset = load_dataset(data_dir, config.validation_size, config.train_size)
        trainer = make_trainer(config, dataset.train, optimizer)
        say(f"Data {dataset.describe()}", flush=True)
        if replace and not resume and main:
            guard.set_aside_old_run()  # only now that the data and the settings are checked
        parallel.barrier("workdir ready")
        for note in salvage_logs(workdir) if main else []:
            say(note)
        with Checkpoints(workdir, keep=config.keep) as checkpoints:
            state, metas = start_state(trainer, checkpoints, dataset.source, resume, say)
            guard.saved = start_epoch = max(metas, default=0)
            if main:
                write_config(workdir, {**trainer.record, "provenance": provenance()})
            step = int(parallel.host_value(state.step))  # the host's copy: reading state.step syncs
            rows = [meta["metrics"] for meta in metas.values() if is_row(meta.get("metrics"))]
            with RunLog(workdir, step, start_epoch, rows, enabled=main) as log, StopSignals() as stop:
                run = _Run(trainer, dataset, checkpoints, log if main else None, stop, guard, say)
                for epoch in range(start_epoch + 1, config.epochs + 1):
                    state, step = run.epoch(state, epoch, step, first=epoch == start_epoch + 1)
    return TrainResult(state=state, metrics=read_metrics(workdir))


@dataclasses.dataclass
class _Run:
    """What each epoch of train_and_evaluate works with."""

    trainer: Trainer
    dataset: Dataset
    checkpoints: Checkpoints
    log: RunLog | None
    stop: StopSignals
    guard: RunGuard
    say: Any

    def epoch(self, state: TrainState, epoch: int, step: int, first: bool) -> tuple[TrainState, int]:
        """Trains, evaluates, checkpoints and logs `epoch` (first: the first one this process runs)."""
        try:
            state, row = _epoch(self.trainer, state, epoch, step, self.dataset, self.log, self.stop, first)
            self.say(format_epoch(row), flush=True)
            # The checkpoint first (its meta holds the row), then the logs: a crash in between is
            # repaired on resume from the checkpoint's meta.
            meta = {"epoch": epoch, "step": row["step"], "dataset": self.dataset.source, "metrics": row}
            self.checkpoints.save(epoch, state, {**meta, **self.trainer.record, "provenance": provenance()})
            self.guard.checkpointed(epoch)  # the old run of --restart --force can go now
            if self.log is not None:
                self.log.log_epoch(row)
        except KeyboardInterrupt:  # a second signal outside a training call
            raise Stopped.second_signal(self.stop.received, epoch, self.guard.saved) from None
        return state, row["step"]


def _epoch(trainer: Trainer, state: TrainState, epoch: int, step: int, dataset: Dataset, log, stop, first):
    """One epoch trained and evaluated: (state, the epoch's metrics row)."""
    log_loss = None if log is None else (lambda s, loss: log.scalar(TAG_TRAIN_LOSS, loss, s))
    try:
        state, losses, seconds = train_epoch(trainer, state, epoch, step, log_loss, stop)
    except Stopped as stopped:
        raise stopped.as_interruption(epoch, epoch - 1) from None
    except DivergedError as e:
        raise DivergedError(
            f"{e}. Last good checkpoint: {f'epoch {epoch - 1}' if epoch > 1 else 'none yet'}"
        ) from None
    except KeyboardInterrupt:  # a second signal: stopped at once, inside a call
        raise Stopped(stop.received or signal.SIGINT, step).as_interruption(epoch, epoch - 1) from None
    lr = parallel.host_value(current_learning_rate(state.opt_state))
    row = {
        "epoch": epoch,
        "step": int(parallel.host_value(state.step)),
        "train_loss": float(np.mean(losses)),  # mean of the epoch's per-batch mean losses
        "learning_rate": None if lr is None else float(lr),
        "train_seconds": seconds,
        "images_per_second": len(dataset.train) / seconds,
    }
    if first:  # launch -> first call done: imports, data, compilation
        row["seconds_to_first_step"] = trainer.program.first_call_done - _process_start_time()
    row.update(evaluate_state(trainer.evaluator, state, dataset))
    return state, row


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()
