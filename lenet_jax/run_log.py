"""A run's log: TensorBoard (tensorboardX) and `metrics.jsonl`, and the console's epoch line.

Tag names are defined here once; the recipe's three are kept verbatim so that its TensorBoard
dashboards still work. Where the files go is `lenet_jax.workdir`'s business.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lenet_jax.workdir import METRICS_FILE, TENSORBOARD_SUBDIR, read_metrics


def _import_tensorboardx():
    """tensorboardX, imported without torch.

    tensorboardX imports torch whenever it is installed (to recognise torch tensors, which this
    project never logs): with torch present that costs seconds of start-up and ~100 MB of RSS.
    A None entry in sys.modules makes that `import torch` fail fast, as if absent; it is removed
    again right after, so torch stays importable.
    """
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.proto.summary_pb2 import Summary
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter, Summary


SummaryWriter, Summary = _import_tensorboardx()

# TensorBoard tags. The first three are the PyTorch tutorial's.
TAG_TRAIN_LOSS = "Train Loss"
TAG_TEST_TOTAL_LOSS = "Test Total Loss"
TAG_ACCURACY = "Accuracy Rate"
TAG_LEARNING_RATE = "Learning Rate"
TAG_VALIDATION_TOTAL_LOSS = "Validation Total Loss"
TAG_VALIDATION_ACCURACY = "Validation Accuracy Rate"



class RunLog:
    """Writes one run's metrics to TensorBoard and metrics.jsonl (console output is separate).

    metrics.jsonl gets one JSON object per finished epoch. On resume it is rewritten to hold
    only the epochs up to the checkpoint resumed from, and TensorBoard is told to discard events
    after the resumed step (`purge_step`), so no epoch is duplicated; rows that the file lacks
    (a crash between a checkpoint and its log line, a damaged file set aside) are rebuilt from
    the checkpoints' metas (`checkpoint_rows`), so none is missing.
    """

    def __init__(
        self,
        workdir: Path,
        resume_step: int = 0,
        resume_epoch: int = 0,
        checkpoint_rows: list[dict[str, Any]] = (),
        enabled: bool = True,
    ):
        # Disabled (processes other than 0 of a multi-process run): every method does nothing.
        self.enabled = enabled
        self._epochs: set[int] = set()
        if not enabled:
            return
        self.metrics_path = workdir / METRICS_FILE
        rows = {row["epoch"]: row for row in read_metrics(workdir) if row["epoch"] <= resume_epoch}
        missing = [row for row in checkpoint_rows if row["epoch"] not in rows]
        rows.update({row["epoch"]: row for row in missing})
        self._write_rows([rows[epoch] for epoch in sorted(rows)])
        self._epochs = set(rows)
        self.tensorboard = SummaryWriter(str(workdir / TENSORBOARD_SUBDIR), purge_step=resume_step or None)
        for row in missing:
            self._scalars(row)

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, self.metrics_path)

    def scalar(self, tag: str, value: float, step: int) -> None:
        # Written as a raw Summary: SummaryWriter.add_scalar would rewrite "Train Loss" to
        # "Train_Loss", and the recipe's dashboards expect its tags verbatim.
        if not self.enabled:
            return
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self.tensorboard._get_file_writer().add_summary(summary, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Appends one epoch's row to metrics.jsonl (flushed and fsynced: a crash keeps it)."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._epochs.add(row["epoch"])
        self.tensorboard.flush()

    def log_epoch(self, row: dict[str, Any]) -> None:
        """An epoch's row to TensorBoard and metrics.jsonl."""
        self._scalars(row)
        self.epoch(row)

    def _scalars(self, row: dict[str, Any]) -> None:
        """An epoch's row to TensorBoard: the recipe's tags, at the epoch number."""
        self.scalar(TAG_TEST_TOTAL_LOSS, row["test_total_loss"], row["epoch"])
        self.scalar(TAG_ACCURACY, row["test_accuracy"], row["epoch"])
        if "validation_accuracy" in row:
            self.scalar(TAG_VALIDATION_TOTAL_LOSS, row["validation_total_loss"], row["epoch"])
            self.scalar(TAG_VALIDATION_ACCURACY, row["validation_accuracy"], row["epoch"])
        if row.get("learning_rate") is not None:
            self.scalar(TAG_LEARNING_RATE, row["learning_rate"], row["step"])

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()

    # A context manager: the TensorBoard writer runs a thread, stopped on every exit.
    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_epoch(row: dict[str, Any]) -> str:
    """The console line of an epoch's row."""
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
