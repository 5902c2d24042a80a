"""The PyTorch reference: the tutorial's LeNet and training loop, with the data preloaded.

Same model, initialisation (PyTorch's defaults), loss, optimizer (SGD 0.05), batch size (64,
last partial batch kept) and evaluation as lenet_jax's recipe. The data are one float tensor in
memory and batches are indexed from a `torch.randperm` order: the fastest plain PyTorch loop
(the tutorial's DataLoader version is ~1.7x slower here). Used by scripts/benchmark.py.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def lenet(activation: str = "sigmoid", pool: str = "avg") -> nn.Module:
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    pool_layer = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        act(),
        pool_layer(2, 2),
        nn.Conv2d(6, 16, 5),
        act(),
        pool_layer(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Linear(120, 84),
        nn.Linear(84, 10),
    )


class TorchTrainer:
    """Trains and evaluates the reference model on arrays held in memory."""

    def __init__(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        lr: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
        activation: str = "sigmoid",
        pool: str = "avg",
        optimizer: str = "sgd",
    ):
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = lenet(activation, pool)
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()
        self.batch_size = batch_size
        # NCHW float32 in [0, 1], as torchvision's ToTensor makes them.
        self.train_x = torch.from_numpy(train_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        self.train_y = torch.from_numpy(train_labels.astype(np.int64))
        self.test_x = torch.from_numpy(test_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        self.test_y = torch.from_numpy(test_labels.astype(np.int64))

    def train_epoch(self) -> float:
        """One shuffled pass over the training set; returns seconds."""
        self.model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.train_y), generator=self.generator)
        for i in range(0, len(order), self.batch_size):
            index = order[i : i + self.batch_size]
            loss = self.loss(self.model(self.train_x[index]), self.train_y[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy and total loss (sum of per-batch mean losses) over 64-image test batches."""
        self.model.eval()
        start = time.perf_counter()
        correct, total_loss = 0, 0.0
        for i in range(0, len(self.test_y), 64):
            x, y = self.test_x[i : i + 64], self.test_y[i : i + 64]
            logits = self.model(x)
            total_loss += float(self.loss(logits, y))
            correct += int((logits.argmax(1) == y).sum())
        return {
            "accuracy": correct / len(self.test_y),
            "total_loss": total_loss,
            "seconds": time.perf_counter() - start,
        }


def main() -> None:
    """`python -m benchmarks.torch_lenet --data-dir DIR`: the reference on its own (for RSS)."""
    import argparse
    from pathlib import Path

    from lenet_jax import idx  # numpy-only IDX reader: no JAX or tfds in this process

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.data_dir)
    trainer = TorchTrainer(
        *idx.read_pair(*idx.split_paths(folder, "train")), *idx.read_pair(*idx.split_paths(folder, "test"))
    )
    for epoch in range(1, args.epochs + 1):
        seconds = trainer.train_epoch()
        print(f"epoch {epoch}: {seconds:.2f} s, test {trainer.evaluate()}")


if __name__ == "__main__":
    main()
