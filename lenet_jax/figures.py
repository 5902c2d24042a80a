"""The report's figures (matplotlib) and per-class scores: `render_report`, run in a process of its own
by `lenet_jax.report`, so nothing here imports JAX."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from lenet_jax.idx import NUM_CLASSES  # noqa: E402

Target = Path | IO[bytes]  # where a figure goes: a file, or a stream (render_report's)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """int (10, 10): row = true digit, column = predicted digit."""
    counts = np.bincount(np.asarray(labels) * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2)
    return counts.reshape(NUM_CLASSES, NUM_CLASSES).astype(np.int64)


def per_class_scores(matrix: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall and support of each digit from a confusion matrix (0.0 where undefined)."""
    correct, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    precision = np.divide(correct, predicted, out=np.zeros(len(matrix)), where=predicted > 0)
    recall = np.divide(correct, actual, out=np.zeros(len(matrix)), where=actual > 0)
    return [
        {"digit": d, "precision": float(precision[d]), "recall": float(recall[d]), "support": int(actual[d])}
        for d in range(len(matrix))
    ]


def _save(fig: Any, path: Target, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Target) -> None:
    """runs: name -> its metrics rows (`lenet_jax.run_log.read_rows`)."""
    panels = (
        ("train_loss", "train loss (epoch mean)", "mean cross-entropy per batch"),
        ("test_total_loss", "test total loss", "sum of per-batch mean losses"),
        ("test_accuracy", "test accuracy", "fraction correct"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        for name, rows in runs.items():
            ax.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o", label=name)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole
        ax.grid(alpha=0.3)
    axes[2].legend()
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, path: Target) -> None:
    fig, ax = plt.subplots(figsize=(7, 6))
    # Log colours: the diagonal's ~1,000s would otherwise wash out the few mistakes.
    shown = ax.imshow(matrix + 1, cmap="Blues", norm=matplotlib.colors.LogNorm(vmin=1))
    fig.colorbar(shown, ax=ax, label="count + 1 (log scale)")
    threshold = np.log1p(matrix).max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if np.log1p(count) > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set(xticks=range(NUM_CLASSES), yticks=range(NUM_CLASSES), xlabel="predicted", ylabel="true")
    ax.set_title(f"confusion matrix ({matrix.trace()} / {matrix.sum()} correct)")
    _save(fig, path)


def plot_mistakes(images, labels, probabilities, path: Target, count: int = 24) -> None:
    predictions = probabilities.argmax(-1)
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:count]
    columns = 8
    fig, axes = plt.subplots(max(1, -(-len(wrong) // columns)), columns, figsize=(12, 5))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), wrong, strict=False):
        ax.imshow(images[i, ..., 0], cmap="gray")
        title = f"true {labels[i]}, pred {predictions[i]}\n{probabilities[i, predictions[i]]:.0%}"
        ax.set_title(title, fontsize=8)
    fig.suptitle("most confidently misclassified test digits")
    _save(fig, path)


def plot_per_class(scores: list[dict[str, Any]], path: Target) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axis("off")
    cells = [[s["digit"], f"{s['precision']:.4f}", f"{s['recall']:.4f}", s["support"]] for s in scores]
    table = ax.table(cellText=cells, colLabels=["digit", "precision", "recall", "support"], loc="center")
    table.scale(1, 1.3)
    ax.set_title("per-class precision and recall (test set)")
    _save(fig, path)


def plot_filters(kernel: np.ndarray, path: Target) -> None:
    """kernel (5, 5, 1, 6): the first convolution's filters."""
    filters = np.asarray(kernel)[:, :, 0, :]
    fig, axes = plt.subplots(1, filters.shape[-1], figsize=(2 * filters.shape[-1], 2.3))
    limit = np.abs(filters).max()
    for i, ax in enumerate(np.ravel(axes)):
        shown = ax.imshow(filters[..., i], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"filter {i}")
        ax.axis("off")
    fig.suptitle("conv1 filters (red +, blue -)")
    fig.tight_layout()
    fig.colorbar(shown, ax=list(np.ravel(axes)), label="weight", shrink=0.8)
    _save(fig, path, tight=False)  # laid out before the colour bar, which tight_layout cannot place


def render_report(inputs: Any) -> dict[str, bytes]:
    """Every report file's bytes (PNGs, per_class.json) from the arrays `evaluate --report` sends."""
    images, labels, probabilities = inputs["images"], inputs["labels"], inputs["probabilities"]
    matrix = confusion_matrix(labels, probabilities.argmax(-1))
    scores = per_class_scores(matrix)
    files = {name: io.BytesIO() for name in ("curves", "confusion", "mistakes", "per_class", "filters")}
    plot_curves(json.loads(str(inputs["runs"])), files["curves"])
    plot_confusion(matrix, files["confusion"])
    plot_mistakes(images, labels, probabilities, files["mistakes"])
    plot_per_class(scores, files["per_class"])
    plot_filters(inputs["kernel"], files["filters"])
    summary = {
        "workdir": str(inputs["workdir"]),
        "epoch": int(inputs["epoch"]),
        "test_accuracy": float(matrix.trace() / matrix.sum()),
        "per_class": scores,
        "confusion_matrix": matrix.tolist(),
    }
    return {f"{name}.png": png.getvalue() for name, png in files.items()} | {
        "per_class.json": (json.dumps(summary, indent=1) + "\n").encode()
    }


def write_report(workdirs: list, out_dir: str | os.PathLike, epoch: int | None = None, data_dir=None) -> dict:
    """Deprecated (0.3): evaluation.evaluate_checkpoint(workdir, report=DIR), from its one evaluation."""
    message = "figures.write_report is deprecated: use evaluation.evaluate_checkpoint(..., report=DIR)"
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    from lenet_jax.evaluation import evaluate_checkpoint

    files = evaluate_checkpoint(workdirs[0], epoch, data_dir, report=out_dir, compare=workdirs[1:])["report"]
    return {**json.loads((Path(out_dir) / "per_class.json").read_text()), "files": files}


def main() -> None:
    """The drawing process (lenet_jax.report): arrays (.npz) on stdin, the files (.npz) on stdout."""
    results, sys.stdout = sys.stdout.buffer, sys.stderr  # a library's stray print stays out of the .npz
    drawn = render_report(np.load(io.BytesIO(sys.stdin.buffer.read())))
    out = io.BytesIO()
    np.savez(out, **{name: np.frombuffer(data, np.uint8) for name, data in drawn.items()})
    results.write(out.getvalue())


if __name__ == "__main__":
    main()
