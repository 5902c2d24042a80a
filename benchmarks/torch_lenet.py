"""The PyTorch reference: the tutorial's LeNet and training loop, with the data preloaded.

The tutorial's recipe is lenet-jax's `recipe` preset, so the reference is that preset's twin
(benchmarks/torch_presets.py): same model, PyTorch's default initialisation, loss, SGD 0.05,
batch 64 (last partial batch kept) and evaluation. The data are one float tensor in memory and
batches are indexed from a `torch.randperm` order: the fastest plain PyTorch loop (the
tutorial's DataLoader version is ~1.7x slower here). Used by `python -m benchmarks`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.torch_presets import PresetTwin, load_idx
from lenet_jax.config import get_preset


class TorchTrainer:
    """Trains and evaluates the reference model on arrays held in memory, at `threads` threads
    (set before each epoch and evaluation: benchmarks interleave thread counts)."""

    def __init__(self, train_images, train_labels, test_images, test_labels, seed=0, threads=None):
        self.threads = threads or torch.get_num_threads()
        self.name = f"pytorch-{self.threads}t"
        self.twin = PresetTwin(
            get_preset("recipe").replace(seed=seed), train_images, train_labels, test_images, test_labels
        )

    def train_epoch(self) -> float:
        """One shuffled pass over the training set; returns seconds."""
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        for images, labels in self.twin.epoch_batches():
            self.twin.train_step(images, labels)
        return time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy and total loss (sum of per-batch mean losses) over 64-image test batches."""
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        correct, total_loss = 0, 0.0
        for x, y in zip(self.twin.test_x.split(64), self.twin.test_y.split(64), strict=True):
            logits = self.twin.model(x)
            total_loss += float(F.cross_entropy(logits, y))
            correct += int((logits.argmax(1) == y).sum())
        accuracy = correct / len(self.twin.test_y)
        return {"accuracy": accuracy, "total_loss": total_loss, "seconds": time.perf_counter() - start}


def main() -> None:
    """`python -m benchmarks.torch_lenet --data-dir DIR`: the reference on its own (for RSS)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    trainer = TorchTrainer(*load_idx(args.data_dir), threads=args.threads)  # load_idx: numpy, no JAX
    for epoch in range(1, args.epochs + 1):
        seconds = trainer.train_epoch()
        print(f"epoch {epoch}: {seconds:.2f} s, test {trainer.evaluate()}")


if __name__ == "__main__":
    main()
