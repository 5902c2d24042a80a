"""PyTorch twins of lenet-jax's presets: the same algorithm, implemented in plain eager PyTorch.

A twin is built from the preset's own `Config`, so it follows the preset; a field it cannot
reproduce is refused (`check_supported`), never ignored. What "the same" means, field by field:
docs/performance-notes-cold-start.md section 1; tests/test_torch_twins.py checks each. Two details
are easy to get wrong: feature_norm normalises each image's (C, H, W) features with one scale and
offset per channel, and the twin flattens in (C, H, W) order, so the first Dense layer's rows are
permuted when weights move from lenet-jax's (H, W, C). `python -m benchmarks.torch_presets --preset
fast --data-dir DIR` runs `time_to_accuracy` once (one JSON line). No JAX is imported here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_lenet import load_idx, nchw
from lenet_jax.config import AUGMENTATION_STRENGTHS, PRESETS, Config
from lenet_jax.torch_checkpoint import flax_kernel, torch_weight

# The standard deviation of a unit normal truncated to [-2, 2] (Flax's truncated-normal correction).
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978
ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}  # optax.adam's defaults
# optimizer -> (torch class, its arguments beyond lr and weight_decay), as optax's optimizer.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"nesterov": False}),
    "nesterov": (torch.optim.SGD, {"nesterov": True}),
    "adam": (torch.optim.Adam, ADAM),
    "adamw": (torch.optim.AdamW, ADAM),
}
SCHEDULES = ("constant", "cosine", "warmup-cosine")
DISTORTIONS = ("augment_translate", "augment_rotate", "augment_scale", "augment_shear", "elastic_alpha")


class UnsupportedConfig(ValueError):
    """The config asks for something the twin does not reproduce."""


def check_supported(config: Config) -> None:
    """Raises UnsupportedConfig naming the first field the twin cannot reproduce."""
    if config.optimizer not in OPTIMIZERS:
        raise UnsupportedConfig(
            f"no PyTorch twin of optimizer {config.optimizer!r} with optax's semantics "
            f"(twins exist for {', '.join(OPTIMIZERS)})"
        )
    if config.grad_clip is not None:
        raise UnsupportedConfig("grad_clip has no PyTorch twin yet (optax clips without an epsilon)")
    if config.schedule not in SCHEDULES:
        raise UnsupportedConfig(f"no PyTorch twin of schedule {config.schedule!r}")
    for name in AUGMENTATION_STRENGTHS:
        if getattr(config, name) and name not in DISTORTIONS:
            raise UnsupportedConfig(f"{name} has no PyTorch twin yet (twins: affine and elastic distortions)")


ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu}
POOLS = {"avg": F.avg_pool2d, "max": F.max_pool2d}
LAYERS = ("conv1", "conv2", "dense1", "dense2", "dense3")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over each image's (C, H, W) values, with a scale and an offset per channel
    (nn.GroupNorm(1, C) is the same up to rounding, which the stored fixture would see)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=1e-6)  # flax.linen.LayerNorm's epsilon
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class TwinLeNet(nn.Module):
    """lenet_jax.model.LeNet in PyTorch (NCHW), for the options a Config sets."""

    def __init__(self, activation="sigmoid", pool="avg", dense_activation=False, feature_norm=False):
        super().__init__()
        self.act, self.pool, self.dense_activation = ACTIVATIONS[activation], POOLS[pool], dense_activation
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.feature_norm = ChannelLayerNorm(16) if feature_norm else None
        self.dense1 = nn.Linear(16 * 5 * 5, 120)
        self.dense2 = nn.Linear(120, 84)
        self.dense3 = nn.Linear(84, 10)

    @classmethod
    def from_config(cls, config: Config) -> TwinLeNet:
        return cls(config.activation, config.pool, config.dense_activation, config.feature_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)), 2)
        x = self.pool(self.act(self.conv2(x)), 2)
        if self.feature_norm is not None:
            x = self.feature_norm(x)
        x = x.flatten(1)
        for dense in (self.dense1, self.dense2):
            x = self.act(dense(x)) if self.dense_activation else dense(x)
        return self.dense3(x)


@torch.no_grad()
def initialize(model: TwinLeNet, scheme: str, generator: torch.Generator) -> None:
    """lenet-jax's init schemes ('flax' or 'torch'), drawn from `generator`."""
    for layer in (getattr(model, name) for name in LAYERS):
        fan_in = layer.weight[0].numel()  # in_channels * kh * kw, or in_features
        if scheme == "flax":
            std = math.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STDDEV
            nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
            layer.bias.zero_()
        elif scheme == "torch":
            bound = 1.0 / math.sqrt(fan_in)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        else:
            raise UnsupportedConfig(f"no PyTorch twin of init scheme {scheme!r}")
    if model.feature_norm is not None:
        model.feature_norm.weight.fill_(1.0)
        model.feature_norm.bias.zero_()


def _leaf_names(model: TwinLeNet) -> dict[str, tuple[str, str]]:
    """The twin's state_dict keys -> (layer, leaf) of lenet-jax's `params` pytree."""
    weights = {layer: "kernel" for layer in LAYERS}
    if model.feature_norm is not None:
        weights["feature_norm"] = "scale"
    names = {}
    for layer, weight in weights.items():
        names |= {f"{layer}.weight": (layer, weight), f"{layer}.bias": (layer, "bias")}
    return names


@torch.no_grad()
def load_flax_params(model: TwinLeNet, params: Any) -> None:
    """Copies lenet-jax parameters (the `params` pytree, arrays of any kind) into the twin, kernels
    as the tutorial's weights (lenet_jax.torch_checkpoint's layout: the twin's is MyLeNet's)."""
    state = {}
    for key, (layer, leaf) in _leaf_names(model).items():
        array = np.asarray(params[layer][leaf], np.float32)
        state[key] = torch.tensor(torch_weight(layer, array) if leaf == "kernel" else array)  # a copy
    model.load_state_dict(state)


def to_flax_params(model: TwinLeNet) -> dict[str, dict[str, np.ndarray]]:
    """The twin's parameters in lenet-jax's layout (numpy): the inverse of load_flax_params."""
    out: dict[str, dict[str, np.ndarray]] = {}
    state = model.state_dict()
    for key, (layer, leaf) in _leaf_names(model).items():
        array = flax_kernel(layer, state[key].numpy()) if leaf == "kernel" else state[key].numpy()
        out.setdefault(layer, {})[leaf] = np.array(array, order="C")
    return out


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> learning rate, as lenet_jax.optimizers.learning_rate_schedule's optax schedule
    computes it (float32, the same operations in the same order)."""
    f32 = np.float32
    peak, total = f32(config.lr), config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

    def cosine(count: int, decay_steps: int) -> float:
        count = f32(min(count, decay_steps))  # optax: jnp.minimum(count, float(decay_steps))
        return float(peak * (f32(0.5) * (f32(1) + np.cos(f32(np.pi) * count / f32(decay_steps)))))

    def warmup_cosine(step: int) -> float:
        if step < warmup:  # optax.linear_schedule(0, peak, warmup)
            return float(-peak * (f32(1) - f32(max(step, 0)) / f32(warmup)) + peak)
        return cosine(step - warmup, total - warmup)

    schedules = {"constant": lambda step: float(peak), "cosine": lambda step: cosine(step, total)}
    return {**schedules, "warmup-cosine": warmup_cosine}[config.schedule]


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    """The config's optimizer with optax's semantics (check_supported first); lr set per step."""
    optimizer, options = OPTIMIZERS[config.optimizer]
    if "nesterov" in options:
        options = {**options, "momentum": config.momentum}
    return optimizer(params, lr=config.lr, weight_decay=config.weight_decay, **options)


def ema_decay_at(step: int, decay: float) -> float:
    """min(decay, (1 + step) / (10 + step)) in float32, as lenet_jax.steps.ema_decay_at."""
    s = np.float32(step)
    return float(np.minimum(np.float32(decay), (np.float32(1) + s) / (np.float32(10) + s)))


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """G with G @ x = x convolved with a normalised Gaussian (lenet_jax.augment's matrix)."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


class TwinAugment:
    """lenet_jax.augment's per-image affine + elastic distortion on NCHW batches."""

    def __init__(self, config: Config, size: int = 28):
        self.translate, self.rotate = config.augment_translate, config.augment_rotate
        self.scale, self.shear = config.augment_scale, config.augment_shear
        self.alpha, self.size = config.elastic_alpha, size
        self.gaussian = torch.from_numpy(gaussian_matrix(size, config.elastic_sigma))
        grid = torch.arange(size, dtype=torch.float32)
        self.ys, self.xs = (axis.reshape(1, -1) for axis in torch.meshgrid(grid, grid, indexing="ij"))

    @classmethod
    def from_config(cls, config: Config) -> TwinAugment | None:
        return cls(config) if any(getattr(config, name) for name in DISTORTIONS) else None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draws each image's transform (uniform in [-1, 1) per parameter, as jax.random.uniform)
        and 8-bit elastic noise, and applies them."""
        batch, h = len(images), self.size
        u = torch.rand(batch, 5, generator=generator) * 2 - 1
        noise = None
        if self.alpha:  # lenet_jax.augment._uniform_bytes: 256 levels in (-1, 1), layout (H, B*2*W)
            levels = torch.randint(0, 256, (h, batch * 2 * h), generator=generator)
            noise = (levels.float() + 0.5) / 128.0 - 1.0
        return self.apply(images, u, noise)

    def apply(self, images: torch.Tensor, u: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """images (B, 1, H, W) transformed by the draws u (B, 5) in [-1, 1) and noise (H, B*2*W)."""
        batch, h = len(images), self.size
        ty, tx = u[:, 0:1] * self.translate, u[:, 1:2] * self.translate
        angle = u[:, 2:3] * math.radians(self.rotate)
        zoom = 1.0 + u[:, 3:4] * self.scale
        tan = torch.tan(u[:, 4:5] * math.radians(self.shear))
        cos, sin = torch.cos(angle), torch.sin(angle)
        a00, a01, a10, a11 = cos, cos * tan - sin, sin, sin * tan + cos
        centre = (h - 1) / 2
        dy, dx = self.ys - centre - ty, self.xs - centre - tx
        rows = (a11 * dy - a01 * dx) / zoom + centre
        cols = (-a10 * dy + a00 * dx) / zoom + centre
        if noise is not None:
            field = (self.gaussian @ noise).reshape(h * batch * 2, h) @ self.gaussian.T
            field = field.reshape(h, batch, 2, h).permute(1, 2, 0, 3)
            peak = field.abs().amax(dim=(1, 2, 3), keepdim=True)
            field = field / (peak + 1e-6) * self.alpha
            rows = rows + field[:, 0].reshape(batch, -1)
            cols = cols + field[:, 1].reshape(batch, -1)
        # grid_sample(align_corners=True): -1 and 1 are the centres of the first and last pixel.
        grid = torch.stack([cols, rows], dim=-1).reshape(batch, h, h, 2) * (2.0 / (h - 1)) - 1.0
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class PresetTwin:
    """Trains and evaluates the twin of a Config on arrays held in memory."""

    def __init__(self, config: Config, train_images, train_labels, test_images, test_labels):
        check_supported(config)
        self.config, self.step = config, 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model = TwinLeNet.from_config(config)
        initialize(self.model, config.init_scheme, self.generator)
        self.average = copy.deepcopy(self.model).requires_grad_(False) if config.ema_decay else None
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.train_x, self.train_y = nchw(train_images), torch.from_numpy(train_labels.astype(np.int64))
        self.test_x, self.test_y = nchw(test_images), torch.from_numpy(test_labels.astype(np.int64))
        self.steps_per_epoch = -(-len(self.train_y) // config.batch_size)
        self.schedule = learning_rate_schedule(config, self.steps_per_epoch)
        self.augment = TwinAugment.from_config(config)
        self.first_step_seconds: float | None = None

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update (lr at self.step), then the weight average; returns the loss."""
        if self.augment is not None:
            images = self.augment(images, self.generator)
        loss = F.cross_entropy(self.model(images), labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad()
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        self.optimizer.step()
        if self.average is not None:
            weight = float(1.0 - np.float32(ema_decay_at(self.step, self.config.ema_decay)))
            with torch.no_grad():  # what torch.optim.swa_utils' EMA does: one foreach lerp
                torch._foreach_lerp_(list(self.average.parameters()), list(self.model.parameters()), weight)
        self.step += 1
        return loss.detach()

    def evaluations(self, evals_per_epoch: int, steps_per_call: int = 1):
        """Trains, yielding a row where the JAX trainer's calls of steps_per_call steps let it
        evaluate: after the call passing each 1/evals_per_epoch of an epoch, and at each epoch's
        end. train_seconds count from the first step and exclude the evaluations."""
        every, elapsed = max(1, self.steps_per_epoch // evals_per_epoch), 0.0
        for _ in range(self.config.epochs):
            start, call_start = time.perf_counter(), self.step
            order = torch.randperm(len(self.train_y), generator=self.generator)
            for index in order.split(self.config.batch_size):  # a shuffled epoch, the last batch partial
                self.train_step(self.train_x[index], self.train_y[index])
                if self.first_step_seconds is None:
                    self.first_step_seconds = time.perf_counter() - start
                epoch_end = self.step % self.steps_per_epoch == 0
                if self.step - call_start < steps_per_call and not epoch_end:
                    continue  # inside a call: no evaluation point
                passed, call_start = self.step // every > call_start // every, self.step
                if passed or epoch_end:
                    elapsed += time.perf_counter() - start
                    yield {
                        "epoch": round(self.step / self.steps_per_epoch, 3),
                        "step": self.step,
                        "train_seconds": round(elapsed, 3),
                        "test_accuracy": self.evaluate(),
                    }
                    start = time.perf_counter()

    @torch.inference_mode()
    def evaluate(self, batch_size: int = 1000) -> float:
        """Test accuracy of the evaluated weights (the average when there is one)."""
        model = self.model if self.average is None else self.average
        correct = 0
        for x, y in zip(self.test_x.split(batch_size), self.test_y.split(batch_size), strict=True):
            correct += int((model(x).argmax(1) == y).sum())
        return correct / len(self.test_y)


def _training_split(config: Config, images: np.ndarray, labels: np.ndarray):
    """The training images a run of `config` uses, as lenet_jax.data.load_dataset picks them."""
    if config.validation_size:
        images, labels = images[: -config.validation_size], labels[: -config.validation_size]
    if config.train_size is not None:
        images, labels = images[: config.train_size], labels[: config.train_size]
    return images, labels


def time_to_accuracy(
    preset: str | Config,
    seed: int,
    target: float = 0.99,
    evals_per_epoch: int = 8,
    threads: int | None = None,
    data_dir: str | Path | None = None,
    data: tuple[np.ndarray, ...] | None = None,
    steps_per_call: int = 1,
    on_eval: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Trains the preset's twin (or a Config's, its seed replaced) until the test accuracy first
    reaches `target`, evaluating (then calling on_eval(row)) where `PresetTwin.evaluations` says.
    data: load_idx's arrays, else read from data_dir."""
    config = (PRESETS[preset]() if isinstance(preset, str) else preset).replace(seed=seed)
    if threads is not None:
        torch.set_num_threads(threads)
    train_images, train_labels, test_images, test_labels = load_idx(data_dir) if data is None else data
    twin = PresetTwin(config, *_training_split(config, train_images, train_labels), test_images, test_labels)
    row: dict = {}
    for row in twin.evaluations(evals_per_epoch, steps_per_call):
        if on_eval is not None:
            on_eval(row)
        if row["test_accuracy"] >= target:
            break
    return {
        "impl": "pytorch-twin",
        "preset": preset if isinstance(preset, str) else "custom",
        "seed": seed,
        "target": target,
        "reached": row.get("test_accuracy", 0) >= target,
        **row,  # epoch, step, train_seconds, test_accuracy of the last evaluation
        "first_step_seconds": round(twin.first_step_seconds or 0.0, 4),
        "evals_per_epoch": evals_per_epoch,
        "steps_per_call": steps_per_call,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.torch_presets --preset fast --seed 0 --data-dir DIR`: one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--evals-per-epoch", type=int, default=8)
    parser.add_argument("--steps-per-call", type=int, default=1, help="evaluate between groups of N steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="also print one line per evaluation")
    args = vars(parser.parse_args(argv))
    on_eval = (lambda row: print(json.dumps(row), flush=True)) if args.pop("verbose") else None
    print(json.dumps(time_to_accuracy(**args, on_eval=on_eval)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
