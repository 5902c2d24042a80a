"""PyTorch twins of lenet-jax's presets: the same algorithm, implemented in plain eager PyTorch.

A twin is built from the preset's own `Config` (lenet_jax.config), so when a preset changes,
its twin follows; a field the twin cannot reproduce is refused (`check_supported`), never
silently ignored. What "the same" means, field by field (tests/test_torch_twins.py checks the
forward pass, the schedule, optimizer steps, the weight average and the augmentation):

- Model: LeNet-5 (conv 6@5x5 pad 2, conv 16@5x5, 2x2 pooling, Dense 120-84-10), the config's
  activation, pooling and dense activation. feature_norm: a LayerNorm over each image's
  (C, H, W) features with one scale and one offset per channel (Flax's
  `LayerNorm(reduction_axes=(1, 2, 3))`, epsilon 1e-6), not `nn.LayerNorm([16, 5, 5])`, whose
  affine parameters are per element. Flattened in PyTorch's (C, H, W) order; `load_flax_params`
  permutes the first Dense layer's rows from lenet-jax's (H, W, C) order.
- init 'flax': Flax's lecun_normal (a normal truncated to +-2 standard deviations, scaled so
  that the truncated distribution has variance 1/fan_in) for weights, zero biases; 'torch':
  uniform +-1/sqrt(fan_in) for weights and biases (PyTorch's defaults).
- Optimizers with optax's semantics: optax's `sgd(momentum, nesterov)` (trace: t = g + m t,
  update g + m t) is `torch.optim.SGD(momentum, nesterov, dampening=0)` exactly; optax's L2
  `add_decayed_weights` before the optimizer is torch's `weight_decay` of SGD/Adam; optax's
  adamw is torch's AdamW (same moments, bias corrections and decoupled decay lr * wd * p).
- Schedules: optax's constant / cosine_decay / warmup_cosine_decay (init 0, end 0) per step,
  in float32 as optax computes them (`learning_rate_schedule`), set on the optimizer before
  each step: step t uses the value at t, as `optax.inject_hyperparams` does.
- Label smoothing: `F.cross_entropy(label_smoothing=s)` (= optax.smooth_labels targets).
- Weight average: after each update ema += (1 - d_t) (params - ema) with
  d_t = min(decay, (1 + t) / (10 + t)) (lenet_jax.steps.ema_decay_at), evaluated instead of
  the raw weights.
- Augmentation: lenet_jax.augment's per-image affine (translation, rotation, zoom, shear) and
  elastic field (8-bit uniform noise, Gaussian-smoothed by the same matrices, peak scaled to
  alpha), bilinear resampling with zeros outside, via `grid_sample`. The random draws are
  torch's, from the same distributions.
- Data: the IDX files read with numpy, images scaled to [0, 1] (no mean/std normalisation, as
  lenet-jax), a fresh shuffle per epoch, the last partial batch kept.

`time_to_accuracy` is what a benchmark calls; `python -m benchmarks.torch_presets --preset fast
--data-dir DIR` runs it once and prints one JSON line. No JAX is imported here (the config and
the IDX reader are plain Python/numpy), so the process holds PyTorch's runtime only.
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

from lenet_jax.config import PRESETS, Config

# Flax's truncated-normal correction: the standard deviation of a unit normal truncated to
# [-2, 2] (jax.nn.initializers.variance_scaling(..., "truncated_normal")).
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978
LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's default
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
# Config fields that change nothing in a twin (how lenet-jax computes or reports, not what).
NOT_ALGORITHM = frozenset({"speed", "eval_batch_size", "log_every", "keep", "seed"})


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
    if config.schedule not in ("constant", "cosine", "warmup-cosine"):
        raise UnsupportedConfig(f"no PyTorch twin of schedule {config.schedule!r}")


# ---------------------------------------------------------------------------------------------
# Model


class ChannelLayerNorm(nn.Module):
    """LayerNorm over each image's (C, H, W) values, with a scale and an offset per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=LAYER_NORM_EPSILON)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
}
POOLS = {"avg": F.avg_pool2d, "max": F.max_pool2d}


class TwinLeNet(nn.Module):
    """lenet_jax.model.LeNet in PyTorch (NCHW), for the options a Config sets."""

    def __init__(
        self,
        activation: str = "sigmoid",
        pool: str = "avg",
        dense_activation: bool = False,
        feature_norm: bool = False,
    ):
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
            x = dense(x)
            if self.dense_activation:
                x = self.act(x)
        return self.dense3(x)

    def layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.dense1, self.dense2, self.dense3]


@torch.no_grad()
def initialize(model: TwinLeNet, scheme: str, generator: torch.Generator) -> None:
    """lenet-jax's init schemes ('flax' or 'torch'), drawn from `generator`."""
    for layer in model.layers():
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


def _dense1_rows_hwc_to_chw(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Rows of the first Dense kernel (in, out) reordered from (H, W, C) to (C, H, W) order."""
    side = math.isqrt(kernel.shape[0] // channels)
    return kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)


def _tensor(array: Any, *axes: int) -> torch.Tensor:
    """A float32 torch copy of a (JAX or numpy) array, its axes permuted if given."""
    array = np.asarray(array, np.float32)
    return torch.from_numpy(np.array(array.transpose(*axes) if axes else array, order="C"))


@torch.no_grad()
def load_flax_params(model: TwinLeNet, params: Any) -> None:
    """Copies lenet-jax parameters (the `params` pytree, arrays of any kind) into the twin.

    Conv kernels HWIO -> OIHW; Dense kernels (in, out) -> Linear weights (out, in), the first
    one's rows permuted from the (H, W, C) flatten to the (C, H, W) one.
    """
    for name in ("conv1", "conv2"):
        getattr(model, name).weight.copy_(_tensor(params[name]["kernel"], 3, 2, 0, 1))
        getattr(model, name).bias.copy_(_tensor(params[name]["bias"]))
    for name in ("dense1", "dense2", "dense3"):
        kernel = np.asarray(params[name]["kernel"])
        if name == "dense1":
            kernel = _dense1_rows_hwc_to_chw(kernel, model.conv2.out_channels)
        getattr(model, name).weight.copy_(_tensor(kernel, 1, 0))
        getattr(model, name).bias.copy_(_tensor(params[name]["bias"]))
    if model.feature_norm is not None:
        model.feature_norm.weight.copy_(_tensor(params["feature_norm"]["scale"]))
        model.feature_norm.bias.copy_(_tensor(params["feature_norm"]["bias"]))


def to_flax_params(model: TwinLeNet) -> dict[str, dict[str, np.ndarray]]:
    """The twin's parameters in lenet-jax's layout (numpy): the inverse of load_flax_params."""
    out = {}
    for name in ("conv1", "conv2"):
        layer = getattr(model, name)
        out[name] = {
            "kernel": layer.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
            "bias": layer.bias.detach().numpy().copy(),
        }
    channels = model.conv2.out_channels
    for name in ("dense1", "dense2", "dense3"):
        layer = getattr(model, name)
        kernel = layer.weight.detach().numpy().T
        if name == "dense1":  # (C, H, W) rows back to (H, W, C)
            side = math.isqrt(kernel.shape[0] // channels)
            kernel = kernel.reshape(channels, side, side, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)
        out[name] = {"kernel": np.ascontiguousarray(kernel), "bias": layer.bias.detach().numpy().copy()}
    if model.feature_norm is not None:
        out["feature_norm"] = {
            "scale": model.feature_norm.weight.detach().numpy().copy(),
            "bias": model.feature_norm.bias.detach().numpy().copy(),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule, weight average


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> learning rate, as lenet_jax.optimizers.learning_rate_schedule's optax schedule
    computes it (float32, the same operations in the same order)."""
    f32 = np.float32
    peak, total = f32(config.lr), config.epochs * steps_per_epoch
    if config.schedule == "constant":
        return lambda step: float(peak)

    def cosine(init: np.float32, count: int, decay_steps: int) -> float:
        count = f32(min(count, decay_steps))  # optax: jnp.minimum(count, float(decay_steps))
        decayed = f32(0.5) * (f32(1) + np.cos(f32(np.pi) * count / f32(decay_steps)))
        return float(init * decayed)

    if config.schedule == "cosine":
        return lambda step: cosine(peak, step, total)
    if config.schedule == "warmup-cosine":
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

        def warmup_cosine(step: int) -> float:
            if step < warmup:  # optax.linear_schedule(0, peak, warmup)
                fraction = f32(1) - f32(min(max(step, 0), warmup)) / f32(warmup)
                return float(-peak * fraction + peak)
            return cosine(peak, step - warmup, total - warmup)

        return warmup_cosine
    raise UnsupportedConfig(f"no PyTorch twin of schedule {config.schedule!r}")


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    """The config's optimizer with optax's semantics (see the module docstring); lr set per step."""
    wd = config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=wd)
    if config.optimizer in ("momentum", "nesterov"):
        nesterov = config.optimizer == "nesterov"
        momentum = config.momentum
        return torch.optim.SGD(params, lr=config.lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if config.optimizer == "adam":  # optax.adam's defaults; coupled L2 as add_decayed_weights
        return torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    raise UnsupportedConfig(f"no PyTorch twin of optimizer {config.optimizer!r}")


def ema_decay_at(step: int, decay: float) -> float:
    """min(decay, (1 + step) / (10 + step)) in float32, as lenet_jax.steps.ema_decay_at."""
    s = np.float32(step)
    return float(np.minimum(np.float32(decay), (np.float32(1) + s) / (np.float32(10) + s)))


# ---------------------------------------------------------------------------------------------
# Augmentation


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
        grid = np.arange(size, dtype=np.float32)
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        self.ys, self.xs = torch.from_numpy(ys.ravel())[None], torch.from_numpy(xs.ravel())[None]

    @classmethod
    def from_config(cls, config: Config) -> TwinAugment | None:
        strengths = (config.augment_translate, config.augment_rotate, config.augment_scale)
        if not any((*strengths, config.augment_shear, config.elastic_alpha)):
            return None
        return cls(config)

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
        grid = torch.stack([cols, rows], dim=-1) * (2.0 / (h - 1)) - 1.0
        return F.grid_sample(
            images, grid.reshape(batch, h, h, 2), mode="bilinear", padding_mode="zeros", align_corners=True
        )


# ---------------------------------------------------------------------------------------------
# Training


class PresetTwin:
    """Trains and evaluates the twin of a Config on arrays held in memory."""

    def __init__(
        self,
        config: Config,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
    ):
        check_supported(config)
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model = TwinLeNet.from_config(config)
        initialize(self.model, config.init_scheme, self.generator)
        self.average = None
        if config.ema_decay:
            self.average = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_optimizer(config, self.model.parameters())
        # NCHW float32 in [0, 1], as lenet-jax feeds its model (no mean/std normalisation).
        self.train_x = torch.from_numpy(train_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        self.train_y = torch.from_numpy(train_labels.astype(np.int64))
        self.test_x = torch.from_numpy(test_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        self.test_y = torch.from_numpy(test_labels.astype(np.int64))
        self.steps_per_epoch = -(-len(self.train_y) // config.batch_size)
        self.schedule = learning_rate_schedule(config, self.steps_per_epoch)
        self.augment = TwinAugment.from_config(config)
        self.step = 0

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

    def epoch_batches(self):
        """(images, labels) of one shuffled epoch, the last batch partial."""
        order = torch.randperm(len(self.train_y), generator=self.generator)
        for i in range(0, len(order), self.config.batch_size):
            index = order[i : i + self.config.batch_size]
            yield self.train_x[index], self.train_y[index]

    @property
    def evaluated_model(self) -> nn.Module:
        return self.model if self.average is None else self.average

    @torch.inference_mode()
    def evaluate(self, batch_size: int = 1000) -> float:
        """Test accuracy of the evaluated weights (the average when there is one)."""
        model = self.evaluated_model
        correct = 0
        for i in range(0, len(self.test_y), batch_size):
            logits = model(self.test_x[i : i + batch_size])
            correct += int((logits.argmax(1) == self.test_y[i : i + batch_size]).sum())
        return correct / len(self.test_y)


def load_idx(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from a folder of IDX files."""
    from lenet_jax import idx  # numpy only

    folder = Path(data_dir)
    train, test = (idx.read_pair(*idx.split_paths(folder, split)) for split in ("train", "test"))
    return (*train, *test)


def _training_split(config: Config, images: np.ndarray, labels: np.ndarray):
    """The training images a run of `config` uses, as lenet_jax.data.load_dataset picks them."""
    if config.validation_size:
        images, labels = images[: -config.validation_size], labels[: -config.validation_size]
    if config.train_size is not None:
        images, labels = images[: config.train_size], labels[: config.train_size]
    return images, labels


def time_to_accuracy(
    preset_name: str | Config,
    seed: int,
    target: float = 0.99,
    evals_per_epoch: int = 8,
    threads: int | None = None,
    data_dir: str | Path | None = None,
    data: tuple[np.ndarray, ...] | None = None,
    steps_per_call: int = 1,
    max_epochs: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Trains the preset's twin until the test accuracy first reaches `target`.

    Evaluates every steps_per_epoch // evals_per_epoch steps and at each epoch's end (as
    scripts/benchmark.py's JAX side); steps_per_call > 1 evaluates only between groups of that
    many steps (counted from each epoch's start), after the group that passes each interval, which
    is where the JAX trainer's multi-step calls let it evaluate: the same evaluation points.
    Training seconds count from the first step (PyTorch's first-step warm-up included) and
    exclude the evaluations. preset_name may be a Config (its seed is replaced by `seed`).
    data: the four arrays of load_idx, else they are read from data_dir.
    Returns {"reached", "epoch", "step", "train_seconds", "test_accuracy", "first_step_seconds",
    ...}; on_eval(row) is called after each evaluation.
    """
    base = PRESETS[preset_name]() if isinstance(preset_name, str) else preset_name
    config = Config(**{**base.to_dict(), "seed": seed})
    if threads is not None:
        torch.set_num_threads(threads)
    if data is None:
        if data_dir is None:
            raise ValueError("time_to_accuracy needs data_dir or data")
        data = load_idx(data_dir)
    train_images, train_labels = _training_split(config, data[0], data[1])
    twin = PresetTwin(config, train_images, train_labels, data[2], data[3])
    steps_per_epoch = twin.steps_per_epoch
    every = max(1, steps_per_epoch // evals_per_epoch)
    epochs = max_epochs or config.epochs
    elapsed, first_step, last_row = 0.0, None, {"step": -1}

    def evaluate() -> dict:
        nonlocal last_row
        accuracy = twin.evaluate()
        row = {
            "epoch": round(twin.step / steps_per_epoch, 3),
            "step": twin.step,
            "train_seconds": round(elapsed, 3),
            "test_accuracy": accuracy,
        }
        if on_eval is not None:
            on_eval(row)
        last_row = row
        return row

    def train() -> dict | None:
        """Trains epoch after epoch; the row of the first evaluation reaching target, or None."""
        nonlocal elapsed, first_step
        for _ in range(epochs):
            start, in_call, first_of_call = time.perf_counter(), 0, twin.step + 1
            for images, labels in twin.epoch_batches():
                twin.train_step(images, labels)
                if first_step is None:
                    first_step = time.perf_counter() - start
                in_call += 1
                if in_call < steps_per_call and twin.step % steps_per_epoch:
                    continue  # inside a call: no evaluation point
                passed = twin.step // every > (first_of_call - 1) // every
                in_call, first_of_call = 0, twin.step + 1
                if passed:
                    elapsed += time.perf_counter() - start
                    row = evaluate()
                    if row["test_accuracy"] >= target:
                        return row
                    start = time.perf_counter()
            elapsed += time.perf_counter() - start
            if last_row["step"] != twin.step:  # the epoch's end, unless just evaluated
                row = evaluate()
                if row["test_accuracy"] >= target:
                    return row
        return None

    reached = train() is not None
    return {
        "impl": "pytorch-twin",
        "preset": preset_name if isinstance(preset_name, str) else "custom",
        "seed": seed,
        "target": target,
        "reached": reached,
        **last_row,  # epoch, step, train_seconds, test_accuracy of the last evaluation
        "first_step_seconds": round(first_step or 0.0, 4),
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
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the preset's epochs")
    parser.add_argument("--verbose", action="store_true", help="also print one line per evaluation")
    args = parser.parse_args(argv)
    on_eval = (lambda row: print(json.dumps(row), flush=True)) if args.verbose else None
    result = time_to_accuracy(
        args.preset,
        args.seed,
        target=args.target,
        evals_per_epoch=args.evals_per_epoch,
        threads=args.threads,
        data_dir=args.data_dir,
        steps_per_call=args.steps_per_call,
        max_epochs=args.max_epochs,
        on_eval=on_eval,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
