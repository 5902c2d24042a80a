"""Where metrics go: the console, TensorBoard (tensorboardX) and `metrics.jsonl`.

Tag names are defined here once; the recipe's three are kept verbatim so that its TensorBoard
dashboards still work.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _import_tensorboardx():
    """tensorboardX, imported without torch.

    tensorboardX imports torch whenever it is installed (to recognise torch tensors, which this
    project never logs): with torch present that costs ~2.7 s of start-up and ~100 MB of RSS.
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

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_SUBDIR = "tensorboard"


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch rows of a workdir's metrics.jsonl (empty if there is none)."""
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Writes one run's metrics to TensorBoard and metrics.jsonl (console output is separate).

    metrics.jsonl gets one JSON object per finished epoch. On resume it is rewritten to hold
    only the epochs up to the checkpoint resumed from, and TensorBoard is told to discard events
    after the resumed step (`purge_step`), so no epoch is duplicated; the training loop re-logs
    from the checkpoints' metadata any epoch whose row a crash lost, so none is missing.
    """

    def __init__(self, workdir: Path, resume_step: int = 0, resume_epoch: int = 0, enabled: bool = True):
        # Disabled (processes other than 0 of a multi-process run): every method does nothing.
        self.enabled = enabled
        self._epochs: set[int] = set()
        if not enabled:
            return
        self.metrics_path = workdir / METRICS_FILE
        kept = [row for row in read_metrics(workdir) if row["epoch"] <= resume_epoch]
        self._write_rows(kept)
        self._epochs = {row["epoch"] for row in kept}
        self.tensorboard = SummaryWriter(str(workdir / TENSORBOARD_SUBDIR), purge_step=resume_step or None)

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, self.metrics_path)

    def missing(self, epoch: int) -> bool:
        """Whether metrics.jsonl lacks this epoch's row."""
        return self.enabled and epoch not in self._epochs

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

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
