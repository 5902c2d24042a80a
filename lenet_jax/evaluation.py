"""Evaluation of parameters on a split, the same for training (every epoch) and `evaluate`: in order,
in fixed-size batches, the last one padded and masked (every image counts once, the accuracy is
exact); the total loss is the recipe's, the sum over batches of each batch's mean loss."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lenet_jax import parallel
from lenet_jax.checkpoints import RestoredParams, load_weights  # noqa: F401 - RestoredParams: 0.1.0's name
from lenet_jax.data import Dataset, Split, gather_batch, load_test_split, pad_rows, sequential_order
from lenet_jax.errors import out_of_memory_names
from lenet_jax.idx import NUM_CLASSES
from lenet_jax.model import model_from_config
from lenet_jax.report import draw_report, report_folder
from lenet_jax.speed import array_cache, conv_block, eval_groups, grouped
from lenet_jax.steps import TrainState, evaluated_params, make_eval_step

METRICS = ("loss", "correct", "count")  # per batch: make_eval_step's
restore_params = load_weights  # lenet-jax 0.1.0's name (now lenet_jax.checkpoints.load_weights)


class Evaluator:
    """A model's params evaluated on splits, one jitted step per shape; groups: batches per call (speed);
    probabilities: each image's softmax too (the report's)."""

    def __init__(self, model: Any, batch_size: int, groups: int = 1, probabilities: bool = False):
        self.batch_size, self.groups, self.probabilities = batch_size, groups, probabilities
        self.mesh = parallel.data_mesh()
        parallel.check_batch_size(batch_size, self.mesh, "--eval-batch-size")
        eval_step = make_eval_step(model, probabilities)
        eval_step = eval_step if groups == 1 else grouped(eval_step)
        replicated = parallel.replicated(self.mesh)
        by_batch = parallel.batch_sharded(self.mesh, 1 if groups == 1 else 2)  # indices (B,) or (G, B)

        # The split's arrays are arguments, not constants: another split reuses the compilation.
        @functools.partial(jax.jit, in_shardings=(replicated,) * 3 + (by_batch,), out_shardings=replicated)
        def step_on_indices(params, images, labels, indices):
            return eval_step(params, gather_batch(images, labels, indices))

        self._step = step_on_indices
        self._device_splits: dict[Split, tuple[jax.Array, jax.Array]] = {}

    def _on_device(self, split: Split) -> tuple[jax.Array, jax.Array]:
        # Copied to the device once per split object and kept: evaluation runs every epoch.
        if split not in self._device_splits:
            self._device_splits[split] = parallel.put_replicated((split.images, split.labels), self.mesh)
        return self._device_splits[split]

    def evaluate(self, params: Any, split: Split) -> dict[str, Any]:
        """accuracy, total_loss (sum of per-batch mean losses), mean_loss, correct, count[, probabilities]."""
        start = time.perf_counter()
        # A batch larger than the split is the split in one batch (the same numbers): the
        # padding would only cost memory (--eval-batch-size 1000000: 32 GB).
        devices = self.mesh.devices.size
        batch = min(self.batch_size, -(-len(split) // devices) * devices)
        order = pad_rows(sequential_order(len(split), batch), self.groups)  # whole groups
        calls = order if self.groups == 1 else order.reshape(-1, self.groups, batch)
        with out_of_memory_names("eval_batch_size", self.batch_size):
            images, labels = self._on_device(split)
            # Per-batch results stay on the device until the end: one transfer, no per-batch sync.
            results = [self._step(params, images, labels, parallel.global_batch(i, self.mesh)) for i in calls]
            results = parallel.host_value(results)
        merged = {name: np.concatenate([np.ravel(r[name]) for r in results]) for name in METRICS}
        losses = merged["loss"].astype(np.float64)[merged["count"] > 0]  # all-padding batches are none
        correct, count = int(merged["correct"].sum()), int(merged["count"].sum())
        metrics = {
            "accuracy": correct / count,
            "total_loss": float(losses.sum()),
            "mean_loss": float(losses.mean()),
            "correct": correct,
            "count": count,
            "seconds": time.perf_counter() - start,
        }
        if self.probabilities:  # the real images' rows, in the split's order
            rows = np.concatenate([np.reshape(r["probabilities"], (-1, NUM_CLASSES)) for r in results])
            metrics["probabilities"] = rows[np.ravel(calls) >= 0]
        return metrics


def evaluate_state(evaluator: Evaluator, state: TrainState, dataset: Dataset) -> dict[str, Any]:
    """An epoch's metrics: of the weights evaluate and predict use (the average if kept), the raw as raw_*."""
    row: dict[str, Any] = {}
    raw = [] if state.ema_params is None else [("raw_", state.params)]
    for prefix, params in [("", evaluated_params(state)), *raw]:
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


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    epoch: int | None = None,
    data_dir: str | os.PathLike | None = None,
    averaged: bool = True,
    speed: str = "auto",
    report: str | os.PathLike | None = None,
    compare: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """One epoch's checkpoint (default: newest) on the test set, as its config: the numbers training logged
    (averaged=False: the raw weights', logged as raw_test_*); speed "plain": the same up to float rounding.
    report: a folder for the report's files (their names under "report"), drawn from this evaluation,
    with the training curves of workdir and the `compare` workdirs."""
    restored = load_weights(workdir, epoch, averaged)
    out = None if report is None else report_folder(report)
    model = model_from_config(restored.config, conv_block(speed))
    batch_size = restored.config.eval_batch_size
    evaluator = Evaluator(model, batch_size, eval_groups(speed, batch_size), probabilities=out is not None)
    test_split = load_test_split(data_dir, array_cache(speed))
    test = evaluator.evaluate(restored.params, test_split)
    result = {
        "epoch": restored.epoch,
        "step": restored.meta["step"],
        "averaged_weights": restored.averaged,
        **{f"test_{name}": test[name] for name in ("accuracy", "total_loss", "mean_loss")},
        "correct": test["correct"],
        "count": test["count"],
    }
    if out is not None:
        kernel = np.asarray(restored.params["conv1"]["kernel"])
        arrays = dict(images=test_split.images, labels=test_split.labels, probabilities=test["probabilities"])
        result["report"] = draw_report(out, [workdir, *compare], restored.epoch, kernel=kernel, **arrays)
    return result
