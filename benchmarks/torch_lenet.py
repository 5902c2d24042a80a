"""The PyTorch reference: the tutorial's LeNet and training loop, with the data preloaded.

Same model, initialisation (PyTorch's defaults), loss, optimizer (SGD 0.05), batch size (64,
last partial batch kept) and evaluation as lenet_jax's recipe. The data are one float tensor in
memory and batches are indexed from a `torch.randperm` order: the fastest plain PyTorch loop
(the tutorial's DataLoader version is ~1.7x slower here). Used by `python -m benchmarks speed`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def lenet() -> nn.Module:
    """The tutorial's LeNet: sigmoid, average pooling, no activation between the Dense layers."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10),
    )  # fmt: skip


def nchw(images: np.ndarray) -> torch.Tensor:
    """NHWC uint8 images as NCHW float32 in [0, 1], as torchvision's ToTensor makes them."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)


def load_idx(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from a folder of IDX files."""
    from lenet_jax import idx  # numpy only: no JAX or tfds in a PyTorch process

    train, test = (idx.read_pair(*idx.split_paths(Path(data_dir), split)) for split in ("train", "test"))
    return (*train, *test)


class TorchTrainer:
    """Trains and evaluates the reference model on arrays held in memory; with `threads`, sets
    PyTorch's threads before each epoch and evaluation (contenders alternate in one process)."""

    def __init__(self, train_images, train_labels, test_images, test_labels, seed=0, threads=None):
        self.name, self.threads = f"pytorch-{threads}t", threads
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model, self.loss = lenet(), nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.train_x, self.train_y = nchw(train_images), torch.from_numpy(train_labels.astype(np.int64))
        self.test_x, self.test_y = nchw(test_images), torch.from_numpy(test_labels.astype(np.int64))

    def _set_threads(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def train_epoch(self) -> float:
        """One shuffled pass over the training set; returns seconds."""
        self._set_threads()
        self.model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.train_y), generator=self.generator)
        for index in order.split(64):
            loss = self.loss(self.model(self.train_x[index]), self.train_y[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy and total loss (sum of per-batch mean losses) over 64-image test batches."""
        self._set_threads()
        self.model.eval()
        start = time.perf_counter()
        correct, total_loss = 0, 0.0
        for x, y in zip(self.test_x.split(64), self.test_y.split(64), strict=True):
            logits = self.model(x)
            total_loss += float(self.loss(logits, y))
            correct += int((logits.argmax(1) == y).sum())
        seconds = time.perf_counter() - start
        return {"accuracy": correct / len(self.test_y), "total_loss": total_loss, "seconds": seconds}


def main() -> None:
    """`python -m benchmarks.torch_lenet --data-dir DIR`: the reference on its own (for RSS)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainer = TorchTrainer(*load_idx(args.data_dir))
    for epoch in range(1, args.epochs + 1):
        seconds = trainer.train_epoch()
        print(f"epoch {epoch}: {seconds:.2f} s, test {trainer.evaluate()}")


if __name__ == "__main__":
    main()
