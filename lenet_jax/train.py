"""The training loop: `train_and_evaluate(config, workdir)`.

Per epoch: shuffle (from the seed and the epoch number), train on every batch, evaluate on
the test set (and the validation split if any), log, checkpoint. A workdir that already holds
checkpoints is resumed from the newest one.

JAX decisions, in one place:
- The training images stay on the device as uint8 for the whole run; each call receives only
  the batches' int32 indices and gathers the batches inside the jitted function.
- One jitted call runs `steps_per_call` training steps (gather + forward + backward + optimizer
  update each) as a lax.scan over that many batches: per-call costs (dispatch, arguments, the
  index transfer) are paid once for all of them (`lenet_jax.backend` has the per-backend
  numbers). With XLA's convolutions on CPU it is one step per call and no loop: inside a loop
  XLA:CPU makes their gradients several times slower (jax-ml/jax#12868). The state argument is
  donated, so XLA updates params and optimizer state in place instead of allocating new ones.
  Compiled with `lenet_jax.backend.training_compiler_options()` (on CPU: XLA's YNNPACK fusions
  off, measured faster for this step's small products).
- Losses stay on the device; the host reads them every `log_every` steps and the rest once per
  epoch, so the loop never waits on the device in between.
- Shapes never change (the last partial batch is padded and masked, the epoch's last call is
  padded with steps that a lax.cond skips), so the training program compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lenet_jax import parallel, reporting
from lenet_jax.augment import augmentation_from_config, make_augment
from lenet_jax.backend import default_steps_per_call, training_compiler_options
from lenet_jax.checkpoints import CHECKPOINT_SUBDIR, Checkpoints
from lenet_jax.config import Config
from lenet_jax.data import Dataset, Split, epoch_order, gather_batch, load_dataset, num_batches
from lenet_jax.errors import ConfigError, DivergedError, LenetError, TrainingInterrupted
from lenet_jax.evaluation import Evaluator
from lenet_jax.model import count_params, model_from_config, resolve_conv_impl
from lenet_jax.optimizers import build_optimizer, current_learning_rate
from lenet_jax.steps import (
    TrainState,
    augmentation_key,
    create_train_state,
    evaluated_params,
    make_train_step,
    scan_steps,
)

# Fields that may differ between a checkpoint and the run resuming it: they change neither the
# model nor the data order nor the updates already made.
SAFE_TO_CHANGE_ON_RESUME = frozenset({"epochs", "log_every", "keep", "eval_batch_size", "steps_per_call"})
CUSTOM_OPTIMIZER = "custom (passed from Python)"


@dataclasses.dataclass
class TrainResult:
    """What a run ends with: the final state and the per-epoch metric rows of the whole run."""

    state: TrainState
    metrics: list[dict[str, Any]]


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """The absolute workdir, created; LenetError if it cannot be written."""
    path = Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: several may start at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LenetError(
            f"workdir {path} is not writable ({e.strerror}): pass a --workdir you can write to"
        ) from e
    return path


def clear_run(workdir: str | os.PathLike) -> None:
    """Deletes a run's checkpoints, metrics, TensorBoard events and config (for --restart)."""
    path = Path(workdir).expanduser().resolve()
    for name in (CHECKPOINT_SUBDIR, reporting.TENSORBOARD_SUBDIR):
        shutil.rmtree(path / name, ignore_errors=True)
    for name in (reporting.METRICS_FILE, reporting.CONFIG_FILE):
        (path / name).unlink(missing_ok=True)


def _config_differences(saved: dict[str, Any], config: Config) -> list[str]:
    current = config.to_dict()
    unsafe = set(current) - SAFE_TO_CHANGE_ON_RESUME
    if config.schedule != "constant":
        unsafe.add("epochs")  # a decaying schedule is stretched over all epochs
    return [
        f"{name}: checkpoint {saved.get(name)!r}, now {current[name]!r}"
        for name in sorted(unsafe)
        if saved.get(name) != current[name]
    ]


def _check_resumable(meta: dict[str, Any], config: Config, dataset: Dataset, optimizer_name: str):
    differences = _config_differences(meta["config"], config)
    if meta.get("dataset") != dataset.source:
        differences.append(f"dataset: checkpoint {meta.get('dataset')}, now {dataset.source}")
    if meta.get("optimizer_source") != optimizer_name:
        differences.append(f"optimizer: checkpoint {meta.get('optimizer_source')}, now {optimizer_name}")
    if differences:
        raise ConfigError(
            "cannot resume: this run differs from its checkpoint in "
            + "; ".join(differences)
            + ". Use the checkpoint's settings or another --workdir"
        )


class _Progress:
    """A per-epoch progress bar on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, epoch: int, enabled: bool = True):
        self._bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="step")

    def update(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between training calls (a Python bool
    read per call costs nothing), so a stop never interrupts a call or a checkpoint write half-way.
    A second signal stops at once."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _LossMonitor:
    """Holds the step losses on the device and checks them on the host every `every` steps.

    Reading one batch of losses every `every` steps keeps the loop from waiting on the device,
    and still names the exact step where the loss first became NaN or infinite.
    """

    def __init__(self, config: Config, first_step: int):
        self.config = config
        self.pending: list[jax.Array] = []
        self.first_pending_step = first_step + 1
        self.epoch_losses: list[float] = []

    def add(self, losses: jax.Array, count: int) -> None:
        """The losses of one call: the first `count` entries are real steps (the rest padding)."""
        self.pending.append((losses, count))

    def flush(self, epoch: int) -> np.ndarray:
        """Reads the pending losses, raises DivergedError on a non-finite one, returns them."""
        arrays = parallel.host_value([losses for losses, _ in self.pending])
        counts = [count for _, count in self.pending]
        real = [np.asarray(a, np.float64).reshape(-1)[:n] for a, n in zip(arrays, counts, strict=True)]
        values = np.concatenate([np.zeros(0), *real])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            step = self.first_pending_step + int(bad[0])
            hint = f"lower --lr (now {self.config.lr:g})"
            if self.config.grad_clip is None:
                hint += " or add --grad-clip 1.0"
            raise DivergedError(
                f"the training loss became {values[bad[0]]} at step {step} (epoch {epoch}): "
                f"training diverged; {hint}"
            )
        self.first_pending_step += len(values)
        self.pending = []
        self.epoch_losses.extend(values.tolist())
        return values


class _Stopped(Exception):
    """Raised inside the epoch loop when a stop signal arrived (before step `step` + 1)."""

    def __init__(self, signum: int, step: int):
        super().__init__(signum, step)
        self.signum, self.step = signum, step


class EpochRunner:
    """Runs training epochs, `steps_per_call` steps per jitted call (see the module docstring for
    what is jitted, donated and kept on the device)."""

    def __init__(
        self,
        model,
        optimizer: optax.GradientTransformation,
        config: Config,
        train: Split,
        shuffle_key: jax.Array,
    ):
        self.config, self.num_examples, self.shuffle_key = config, len(train), shuffle_key
        self.mesh = parallel.data_mesh()
        parallel.check_batch_size(config.batch_size, self.mesh)
        augment = make_augment(augmentation_from_config(config))
        train_step = make_train_step(
            model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
        )
        per_call = config.steps_per_call or default_steps_per_call(resolve_conv_impl(config.conv_impl))
        self.steps_per_call = per_call = min(per_call, self.steps_per_epoch())

        def steps(state, batches, count):
            """Trains on the first `count` of the call's batches (leading axis: steps)."""
            if per_call == 1:  # no loop at all (see STEPS_PER_CALL in lenet_jax.backend)
                state, metrics = train_step(state, jax.tree_util.tree_map(lambda x: x[0], batches))
                return state, metrics["loss"][None]
            return scan_steps(train_step, state, batches, count)

        def gather(images, labels, indices):  # (steps, B) indices -> batches (steps, B, ...)
            return jax.vmap(gather_batch, in_axes=(None, None, 0))(images, labels, indices)

        # State, data, counts and metrics replicated; the batches (and their indices) sharded
        # over the devices along the batch axis: XLA all-reduces the gradients. With one device
        # the shardings change nothing.
        replicated = parallel.replicated(self.mesh)
        sharded = {
            name: parallel.batch_sharded(self.mesh, ndim, axis=1)
            for name, ndim in (("image", 5), ("label", 2), ("mask", 2))
        }
        indices_sharded = sharded["label"]
        jit = functools.partial(jax.jit, compiler_options=training_compiler_options())

        # The gather happens inside the scan, per step: XLA reads each batch from the uint8
        # images when it is needed instead of materialising all of the call's batches as float.
        @functools.partial(
            jit,
            donate_argnums=0,
            in_shardings=(replicated, replicated, replicated, indices_sharded, replicated),
            out_shardings=(replicated, replicated),
        )
        def train_on_indices(state, images, labels, indices, count):
            def step_on_indices(state, step_indices):
                return train_step(state, gather_batch(images, labels, step_indices))

            if per_call == 1:
                return steps(state, gather(images, labels, indices), count)
            return scan_steps(step_on_indices, state, indices, count)

        # With augmentation, the call's batches are gathered and augmented by a jit of their
        # own, then trained on. Same numbers as make_train_step(..., augment) in one jit (a test
        # checks), but measured faster on XLA:CPU: inside the training step's program the
        # resampling costs ~2.6 ms per batch of 128, as its own program ~0.5 ms (the best
        # preset's step with its distortions: +23% time in one jit, +11% in two). No host sync in
        # between: the second call is queued on the first's output. Each batch's key is the one
        # its step would draw (augmentation_key at state.step + its position in the call). The
        # batches are augmented one after another (lax.map), not vmapped: best preset, 16 steps
        # per call, an augmented epoch took 6.4 s against 7.0 s with one step per call
        # (interleaved); vmapped, augmentation added 49% to a plain epoch, with lax.map 19-33%.
        @functools.partial(
            jit,
            in_shardings=(replicated, replicated, replicated, indices_sharded),
            out_shardings=sharded,
        )
        def augmented_batches(state, images, labels, indices):
            batches = gather(images, labels, indices)
            keys = jax.vmap(functools.partial(augmentation_key, state))(jnp.arange(len(indices)))
            return {**batches, "image": jax.lax.map(lambda a: augment(*a), (keys, batches["image"]))}

        @functools.partial(
            jit,
            donate_argnums=0,
            in_shardings=(replicated, sharded, replicated),
            out_shardings=(replicated, replicated),
        )
        def train_on_batches(state, batches, count):
            return steps(state, batches, count)

        if augment is None:
            self._train = train_on_indices
        else:
            self._train = lambda state, images, labels, indices, count: train_on_batches(
                state, augmented_batches(state, images, labels, indices), count
            )
        self.first_step_done: float | None = None  # time.time() when the first call finished
        self._images = parallel.put_replicated(train.images, self.mesh)
        self._labels = parallel.put_replicated(train.labels, self.mesh)

    def steps_per_epoch(self) -> int:
        return num_batches(self.num_examples, self.config.batch_size)

    def run(self, state: TrainState, epoch: int, step: int, log=None, stop=None, probe=None):
        """Trains one epoch from `state` (at host step `step`); returns (state, losses, seconds).

        log(step, loss) is called for every config.log_every-th step (and the loss printed,
        with a progress bar on a terminal), after the call that ran it; without it the epoch
        runs silently. stop (a _StopSignals) is checked before each call. probe = (every, fn):
        fn(state, step) runs after each call that passed a multiple of `every` steps (e.g. a
        mid-epoch evaluation by the benchmark), with the step the state is at; its time is not
        counted in the returned seconds. Raises DivergedError on a non-finite loss.
        """
        order = epoch_order(self.shuffle_key, epoch, self.num_examples, self.config.batch_size)
        per_call, steps_in_epoch = self.steps_per_call, len(order)
        calls = -(-steps_in_epoch // per_call)
        # Padding steps (indices -1, skipped) fill the epoch's last call up to its fixed shape.
        padded = np.full((calls * per_call, order.shape[1]), -1, np.int32)
        padded[:steps_in_epoch] = order
        every = self.config.log_every
        progress = _Progress(steps_in_epoch, epoch, enabled=log is not None)
        losses = _LossMonitor(self.config, step)
        probed = 0.0  # seconds spent in probe calls
        start = time.perf_counter()
        try:
            for call in range(calls):
                if stop is not None and stop.received is not None:
                    raise _Stopped(stop.received, step)
                count = min(per_call, steps_in_epoch - call * per_call)
                indices = parallel.global_batch(padded[call * per_call : (call + 1) * per_call], self.mesh)
                state, call_losses = self._train(state, self._images, self._labels, indices, np.int32(count))
                if self.first_step_done is None:  # once per run: includes compilation
                    jax.block_until_ready(call_losses)
                    self.first_step_done = time.time()
                losses.add(call_losses, count)
                progress.update(count)
                first, step = step + 1, step + count
                logged = range(-(-first // every) * every, step + 1, every)
                if logged:
                    values = losses.flush(epoch)  # values[-1] is the loss of step `step`
                    for logged_step in logged:
                        loss = float(values[len(values) - 1 - (step - logged_step)])
                        progress.write(f"step {logged_step}: train loss {loss:.4f}")
                        if log is not None:
                            log(logged_step, loss)
                if probe is not None and step // probe[0] > (first - 1) // probe[0]:
                    jax.block_until_ready(state)  # the steps so far are training time
                    probe_start = time.perf_counter()
                    probe[1](state, step)  # before the next call donates state's buffers
                    probed += time.perf_counter() - probe_start
            losses.flush(epoch)
            jax.block_until_ready(state)
        finally:
            progress.close()
        return state, losses.epoch_losses, time.perf_counter() - start - probed


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    optimizer: optax.GradientTransformation | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> TrainResult:
    """Trains LeNet as `config` says, evaluating and checkpointing every epoch in workdir.

    optimizer: any optax GradientTransformation; None builds the one the config names.
    data_dir: folder of MNIST-format IDX files; None uses $LENET_DATA_DIR, else tfds download.
    resume: continue from the newest checkpoint in workdir. With resume=False a workdir that
    holds checkpoints is refused (nothing is ever deleted here; see `clear_run`).
    Raises DivergedError on a NaN/inf loss and TrainingInterrupted on SIGINT/SIGTERM; the last
    complete checkpoint stays usable either way.
    """
    workdir = prepare_workdir(workdir)
    # The data first: a bad --data-dir fails before anything with a thread (orbax) is opened.
    dataset = load_dataset(data_dir, config.validation_size, config.train_size)
    with Checkpoints(workdir, keep=config.keep) as checkpoints:
        return _train(config, workdir, checkpoints, dataset, optimizer, resume)


def _train(config, workdir, checkpoints, dataset, optimizer, resume) -> TrainResult:
    latest = checkpoints.latest_epoch()
    if latest is not None and not resume:
        raise LenetError(
            f"{workdir} already holds checkpoints (epochs {', '.join(map(str, checkpoints.epochs()))}): "
            "add --force to --restart to delete them, or pass another --workdir"
        )
    main = parallel.is_main_process()  # only process 0 prints and writes logs
    say = print if main else (lambda *args, **kwargs: None)
    sizes = ", ".join(f"{name} {n:,} images" for name, n in dataset.sizes().items())
    say(f"Data {dataset.source}: {sizes}", flush=True)

    model = model_from_config(config)
    steps_per_epoch = num_batches(len(dataset.train), config.batch_size)
    optimizer_source = "config" if optimizer is None else CUSTOM_OPTIMIZER
    if optimizer is None:
        optimizer = build_optimizer(config, steps_per_epoch)

    # All randomness flows from the seed: init_key -> params and per-step rng, shuffle_key ->
    # every epoch's order (folded with the epoch number).
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    runner = EpochRunner(model, optimizer, config, dataset.train, shuffle_key)
    evaluator = Evaluator(model, config.eval_batch_size)
    ema = config.averages_weights
    start_epoch, metas = 0, {}
    if latest is None:
        state = parallel.put_replicated(create_train_state(model, optimizer, init_key, ema), runner.mesh)
    else:
        metas = {epoch: checkpoints.restore_meta(epoch) for epoch in checkpoints.epochs()}
        _check_resumable(metas[latest], config, dataset, optimizer_source)
        # The restore target is built by eval_shape: shapes and dtypes only, no real init;
        # each array is restored replicated over the run's devices.
        abstract = create_train_state.eval_shape(model, optimizer, init_key, ema)
        abstract = parallel.with_sharding(abstract, parallel.replicated(runner.mesh))
        state = checkpoints.restore_state(latest, abstract)
        start_epoch = latest
    step = int(parallel.host_value(state.step))  # the host's copy: reading state.step would sync
    if latest is not None:
        say(f"Resuming from the checkpoint of epoch {latest} (step {step})")
    devices = f"{jax.device_count()} {jax.default_backend()} device(s), {jax.process_count()} process(es)"
    say(f"LeNet: {count_params(state.params):,} parameters; {devices}")

    if main:
        (workdir / reporting.CONFIG_FILE).write_text(config.to_json() + "\n")
    log = reporting.RunLog(workdir, resume_step=step, resume_epoch=start_epoch, enabled=main)
    for meta in metas.values():  # rows a crash lost between a checkpoint and its log lines
        if log.missing(meta["epoch"]):
            _log_epoch(log, meta["metrics"])

    def log_train_loss(step: int, loss: float) -> None:
        log.scalar(reporting.TAG_TRAIN_LOSS, loss, step)

    last_good_epoch = start_epoch
    try:
        with _StopSignals() as stop:
            for epoch in range(start_epoch + 1, config.epochs + 1):
                try:
                    state, losses, train_seconds = runner.run(
                        state, epoch, step, log_train_loss if main else None, stop
                    )
                except _Stopped as stopped:
                    raise _interrupted(stopped.signum, stopped.step, epoch, last_good_epoch) from None
                except DivergedError as e:
                    kept = f"epoch {last_good_epoch}" if last_good_epoch else "none yet"
                    raise DivergedError(f"{e}. Last good checkpoint: {kept}") from None
                step += runner.steps_per_epoch()

                row = _epoch_row(epoch, state, losses, train_seconds, len(dataset.train))
                if epoch == start_epoch + 1:  # launch -> first step done: imports, data, compile
                    row["seconds_to_first_step"] = runner.first_step_done - _process_start_time()
                row.update(_evaluate(evaluator, state, dataset))
                say(_epoch_line(row), flush=True)

                # The checkpoint first (it holds the row in its meta), then the logs: a crash in
                # between is repaired on resume from the checkpoint's meta.
                checkpoints.save(
                    epoch,
                    state,
                    {
                        "epoch": epoch,
                        "step": row["step"],
                        "config": config.to_dict(),
                        "dataset": dataset.source,
                        "optimizer_source": optimizer_source,
                        "metrics": row,
                    },
                )
                last_good_epoch = epoch
                _log_epoch(log, row)
    finally:
        log.close()
    return TrainResult(state=state, metrics=reporting.read_metrics(workdir))


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


def _interrupted(signum: int, step: int, epoch: int, last_good_epoch: int) -> TrainingInterrupted:
    name = signal.Signals(signum).name
    where = (
        f"from the checkpoint of epoch {last_good_epoch}"
        if last_good_epoch
        else "from the start (no checkpoint yet)"
    )
    return TrainingInterrupted(
        f"{name} received: stopped before step {step + 1} (epoch {epoch}); rerun the same "
        f"command to resume {where}",
        exit_code=128 + signum,
    )


def _log_epoch(log: reporting.RunLog, row: dict[str, Any]) -> None:
    """An epoch's row to TensorBoard (the recipe's tags, at the epoch number) and metrics.jsonl."""
    log.scalar(reporting.TAG_TEST_TOTAL_LOSS, row["test_total_loss"], row["epoch"])
    log.scalar(reporting.TAG_ACCURACY, row["test_accuracy"], row["epoch"])
    if "validation_accuracy" in row:
        log.scalar(reporting.TAG_VALIDATION_TOTAL_LOSS, row["validation_total_loss"], row["epoch"])
        log.scalar(reporting.TAG_VALIDATION_ACCURACY, row["validation_accuracy"], row["epoch"])
    if row["learning_rate"] is not None:
        log.scalar(reporting.TAG_LEARNING_RATE, row["learning_rate"], row["step"])
    log.epoch(row)


def _evaluate(evaluator: Evaluator, state: TrainState, dataset: Dataset) -> dict[str, Any]:
    """The epoch's evaluation metrics: of the averaged weights when the run keeps an average
    (what evaluate.py and predict.py use), with the raw weights' under "raw_*" beside them."""
    row: dict[str, Any] = {}
    evaluated = [("", evaluated_params(state))]
    if state.ema_params is not None:
        evaluated.append(("raw_", state.params))
    for prefix, params in evaluated:
        test = evaluator.evaluate(params, dataset.test)
        row[prefix + "test_accuracy"] = test["accuracy"]
        row[prefix + "test_total_loss"] = test["total_loss"]
        if not prefix:
            row.update(test_mean_loss=test["mean_loss"], eval_seconds=test["seconds"])
        if dataset.validation is not None:
            val = evaluator.evaluate(params, dataset.validation)
            row[prefix + "validation_accuracy"] = val["accuracy"]
            row[prefix + "validation_total_loss"] = val["total_loss"]
    return row


def _epoch_row(epoch: int, state: TrainState, losses: list[float], seconds: float, images: int):
    lr = parallel.host_value(current_learning_rate(state.opt_state))
    return {
        "epoch": epoch,
        "step": int(parallel.host_value(state.step)),
        "train_loss": float(np.mean(losses)),  # mean of the epoch's per-batch mean losses
        "learning_rate": None if lr is None else float(lr),
        "train_seconds": seconds,
        "images_per_second": images / seconds,
    }


def _epoch_line(row: dict[str, Any]) -> str:
    line = (
        f"epoch {row['epoch']}: test total loss {row['test_total_loss']:.4f}, "
        f"accuracy {row['test_accuracy']:.4f}"
    )
    if "validation_accuracy" in row:
        line += f", validation accuracy {row['validation_accuracy']:.4f}"
    if "raw_test_accuracy" in row:
        line += f" (averaged weights; raw weights: accuracy {row['raw_test_accuracy']:.4f}"
        if "raw_validation_accuracy" in row:
            line += f", validation accuracy {row['raw_validation_accuracy']:.4f}"
        line += ")"
    return line + (
        f" | train loss {row['train_loss']:.4f}, {row['train_seconds']:.2f} s, "
        f"{row['images_per_second']:,.0f} images/s"
    )
