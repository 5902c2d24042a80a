"""A run's log: TensorBoard (the tutorial's tags) and metrics.jsonl, completed from the checkpoints' metas;
the console's epoch line."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenet_jax.errors import CheckpointError, LenetError
from lenet_jax.speed import torch_blocked
from lenet_jax.workdir import (
    METRICS_FILE,
    TENSORBOARD_SUBDIR,
    is_row,
    read_config,
    read_metrics,
    salvage_logs,
    scan_metrics,
    write_config,
)

try:
    with torch_blocked():  # lenet_jax.speed says why
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
except ImportError:  # not installed (e.g. a GPU image): metrics.jsonl alone, RunLog says so
    EventsWriter = None
NO_TENSORBOARD = "note: tensorboardX is not installed: this run logs to metrics.jsonl only"

# TensorBoard tags. The first three are the PyTorch tutorial's.
TAG_TRAIN_LOSS = "Train Loss"
TAG_TEST_TOTAL_LOSS = "Test Total Loss"
TAG_ACCURACY = "Accuracy Rate"
TAG_LEARNING_RATE = "Learning Rate"
TAG_VALIDATION_TOTAL_LOSS = "Validation Total Loss"
TAG_VALIDATION_ACCURACY = "Validation Accuracy Rate"

_EVENT_FILES = itertools.count()


class EventFile:
    """A TensorBoard event file written by the caller's thread (SummaryWriter's dies on a full disk)."""

    def __init__(self, directory: Path, purge_step: int | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        # The suffix keeps a run resumed within the same second from truncating the one before's.
        suffix = f".{os.getpid()}.{next(_EVENT_FILES)}"
        self._writer = EventsWriter(str(directory / "events"), suffix)
        if purge_step is not None:  # TensorBoard then drops the events from that step on
            self.add(Event(step=purge_step, file_version="brain.Event:2"))
            self.add(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def add(self, event) -> None:
        event.wall_time = time.time()
        self._writer.write_event(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        # A raw Summary: SummaryWriter.add_scalar would rewrite the tutorial's "Train Loss" to "Train_Loss".
        self.add(Event(step=step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])))

    def flush(self) -> None:
        self._writer.flush()  # flushed and fsynced

    def close(self) -> None:
        self._writer.close()


class RunLog(contextlib.AbstractContextManager):
    """A run's metrics to TensorBoard and metrics.jsonl, cut back to its checkpoint and completed."""

    def __init__(
        self,
        workdir: Path,
        resume_step: int = 0,
        resume_epoch: int = 0,
        checkpoint_rows: list[dict[str, Any]] = (),
        enabled: bool = True,
        record: dict[str, Any] | None = None,
        note: Callable[[str], Any] = print,
    ):
        self.enabled, self.tensorboard = enabled, None
        self.rows = list(checkpoint_rows)  # every epoch's row, oldest first
        if not enabled:
            return
        for line in salvage_logs(workdir):  # damaged logs set aside, so that they block nothing
            note(line)
        if record is not None:
            write_config(workdir, record)
        self.metrics_path = workdir / METRICS_FILE
        logged = [row for row in read_metrics(workdir) if row["epoch"] <= resume_epoch]
        self.rows, missing = complete_rows(logged, checkpoint_rows)
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        os.replace(tmp, self.metrics_path)
        if EventsWriter is None:
            print(NO_TENSORBOARD, flush=True)
        else:
            self.tensorboard = EventFile(workdir / TENSORBOARD_SUBDIR, purge_step=resume_step or None)
        for row in missing:
            self._scalars(row)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.scalar(tag, value, step)

    def train_loss(self, step: int, loss: float) -> None:
        self.scalar(TAG_TRAIN_LOSS, loss, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """An epoch's row to TensorBoard and metrics.jsonl (flushed and fsynced: a crash keeps it)."""
        self.rows.append(row)
        if not self.enabled:
            return
        self._scalars(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def _scalars(self, row: dict[str, Any]) -> None:
        """An epoch's row to TensorBoard: the recipe's tags, at the epoch number."""
        self.scalar(TAG_TEST_TOTAL_LOSS, row["test_total_loss"], row["epoch"])
        self.scalar(TAG_ACCURACY, row["test_accuracy"], row["epoch"])
        if "validation_accuracy" in row:
            self.scalar(TAG_VALIDATION_TOTAL_LOSS, row["validation_total_loss"], row["epoch"])
            self.scalar(TAG_VALIDATION_ACCURACY, row["validation_accuracy"], row["epoch"])
        if row.get("learning_rate") is not None:
            self.scalar(TAG_LEARNING_RATE, row["learning_rate"], row["step"])

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if self.tensorboard is not None:
                self.tensorboard.close()
        except OSError:
            if kind is None:  # else the error the run ends with (often this same full disk) is told
                raise


def complete_rows(rows: list[dict], checkpoint_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows with the checkpoints' rows of the epochs they lack, oldest first; the rows added)."""
    by_epoch = {row["epoch"]: row for row in rows}
    missing = [row for row in checkpoint_rows if row["epoch"] not in by_epoch]
    by_epoch.update((row["epoch"], row) for row in missing)
    return [by_epoch[epoch] for epoch in sorted(by_epoch)], missing


def read_rows(workdir: str | os.PathLike, note: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """A run's rows, oldest first: metrics.jsonl, completed from the checkpoints' metas (note told)."""
    path = Path(workdir) / METRICS_FILE
    logged, problem = scan_metrics(path)
    metas = _checkpoint_metas(workdir)
    saved = [metas[epoch]["metrics"] for epoch in sorted(metas) if is_row(metas[epoch].get("metrics"))]
    rows, rebuilt = complete_rows(logged, saved)
    if not rows:
        raise LenetError(
            f"{workdir} has no metrics.jsonl rows and no checkpoints with metrics: it is not the "
            "workdir of a training run"
        )
    if rebuilt and note is not None:
        why = f"{problem}: it " if problem else ""
        epochs = ", ".join(str(row["epoch"]) for row in rebuilt)
        note(f"note: {path} {why}lacks epoch(s) {epochs}; read them from the checkpoints")
    return rows


def read_run_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The config record of a run: its config.json, else the newest readable checkpoint's."""
    with contextlib.suppress(LenetError):  # missing or damaged: the checkpoints have it too
        if config := read_config(workdir):
            return config
    metas = _checkpoint_metas(workdir)
    if not metas:
        raise LenetError(
            f"{workdir} has no readable config.json and no checkpoints: it is not the workdir of "
            "a training run"
        )
    return metas[max(metas)]["config"]


def _checkpoint_metas(workdir: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """epoch -> meta of every checkpoint whose meta can be read; damaged ones are left out."""
    from lenet_jax.checkpoints import Checkpoints  # orbax: only when needed

    try:  # no checkpoints folder: a CheckpointError too
        with Checkpoints(workdir, read_only=True) as checkpoints:
            return checkpoints.readable_metas(checkpoints.epochs())
    except CheckpointError:
        return {}


def format_epoch(row: dict[str, Any]) -> str:
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
