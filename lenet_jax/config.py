"""Configs as code: `Config`, every field a run depends on (one flag each), and named `PRESETS`."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
import warnings
from collections.abc import Callable
from typing import Any

from lenet_jax.errors import ConfigError

# The choices of each field live with what they compute; validate() checks against them.
from lenet_jax.model import ACTIVATIONS, INIT_SCHEMES, POOLS
from lenet_jax.optimizers import OPTIMIZERS, SCHEDULES
from lenet_jax.speed import SPEEDS

INITS = INIT_SCHEMES  # 0.2's name
# Fields of lenet-jax 0.2 that are now execution choices of `speed` (lenet_jax.speed), not config.
REMOVED_FIELDS = ("conv_impl", "steps_per_call")
# The fields that only build the optimizer: meaningless for a run given an optax optimizer.
OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "grad_clip")
# Beyond the runs anyone makes; keeps the step counter (int32) and metrics.jsonl bounded.
MAX_EPOCHS = 10_000
FLOAT32_MAX = 3.4028234663852886e38  # the device computes in float32: larger values overflow to inf
FROM_PYTHON = "python"  # the `optimizer` recorded for a run given its optimizer from Python


def _field(default: Any, help: str, choices: Any = None, old_name: str | None = None) -> Any:
    """A dataclass field carrying its flag's help and choices, and its 0.1.0 name (still accepted)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "old_name": old_name}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Defaults are the PyTorch tutorial's recipe (`recipe`)."""

    # Model.
    activation: str = _field("sigmoid", "activation after each convolution", ACTIVATIONS)
    pool: str = _field("avg", "2x2 stride-2 pooling after each convolution", POOLS)
    dense_activation: bool = _field(False, "the activation between the Dense layers too (recipe: none)")
    feature_norm: bool = _field(False, "layer-normalise conv features before the Dense layers (32 params)")
    init_scheme: str = _field("torch", "'torch': PyTorch's defaults, 'flax': Flax's", INITS, old_name="init")

    # Data.
    validation_size: int = _field(0, "hold out the last N training images as a validation split (0: none)")
    train_size: int | None = _field(None, "train on the first N training images only (default: all)")

    # Augmentation, on the device per image (lenet_jax.augment); all 0: none (the recipe).
    augment_translate: float = _field(0.0, "random translation, up to this many pixels")
    augment_rotate: float = _field(0.0, "random rotation, up to this many degrees")
    augment_scale: float = _field(0.0, "random zoom, up to this fraction (0.1: 0.9x-1.1x)")
    augment_shear: float = _field(0.0, "random shear, up to this many degrees")
    elastic_alpha: float = _field(0.0, "elastic distortion strength in pixels (Simard et al. 2003)")
    elastic_sigma: float = _field(4.0, "smoothing (Gaussian sigma, pixels) of the elastic field")
    augment_stroke: float = _field(0.0, "random dilation up to this radius in pixels, or thinning up to half")
    augment_blur: float = _field(0.0, "random Gaussian blur, up to this sigma in pixels")
    augment_lowres: float = _field(0.0, "random resolution loss: down- and up-sampling by up to 1 + this")
    augment_gamma: float = _field(0.0, "random ink gamma, up to exp(+-this) (fainter or bolder stroke edges)")

    # Training.
    epochs: int = _field(20, "number of passes over the training set")
    batch_size: int = _field(64, "training batch size (global, over all devices)")
    eval_batch_size: int = _field(64, "evaluation batch size; test total loss sums the per-batch mean losses")
    seed: int = _field(0, "seed of every random choice: initialisation, shuffling")
    optimizer: str = _field("sgd", "optimizer (lenet_jax.optimizers.OPTIMIZERS)", OPTIMIZERS)
    lr: float = _field(0.05, "peak learning rate")
    momentum: float = _field(0.9, "momentum of the momentum, nesterov and rmsprop optimizers")
    weight_decay: float = _field(0.0, "weight decay (decoupled for adamw and lion, L2 otherwise)")
    schedule: str = _field("constant", "learning-rate schedule", SCHEDULES)
    warmup_epochs: float = _field(1.0, "linear warm-up length of the warmup-cosine schedule")
    grad_clip: float | None = _field(None, "clip gradients to this global norm (default: off)")
    label_smoothing: float = _field(0.0, "label smoothing of the training loss (0: none)")
    ema_decay: float = _field(0.0, "evaluate a moving average of the weights with this decay (0: none)")

    # Execution: the same function either way (lenet_jax.speed); may change on resume.
    speed: str = _field("auto", "'auto': lenet_jax.speed's tricks; 'plain': the tutorial's program", SPEEDS)

    # Logging and checkpoints.
    log_every: int = _field(100, "print and log the training loss every N steps")
    keep: int | None = _field(None, "keep only the newest N epoch checkpoints (default: all)")

    def __post_init__(self):
        validate(self)  # a Config that exists is valid, however it was built

    @property
    def averages_weights(self) -> bool:
        """Whether the run keeps a moving average of the weights (and evaluates it)."""
        return self.ema_decay > 0

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated (0.1.0's field names accepted too)."""
        for name in set(REMOVED_FIELDS) & set(changes):
            gone = f"Config.{name} is gone since lenet-jax 0.3 (ignored): speed='plain' turns every "
            gone += "speed trick off"
            warnings.warn(gone, DeprecationWarning, stacklevel=2)
        return dataclasses.replace(self, **_current_names(changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_record(self, optimizer_from_python: bool = False) -> dict[str, Any]:
        """to_dict(); a run given its optimizer from Python: `optimizer: "python"`, no OPTIMIZER_FIELDS."""
        record = self.to_dict()
        if optimizer_from_python:
            for name in OPTIMIZER_FIELDS:
                del record[name]
            record["optimizer"] = FROM_PYTHON
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Inverse of `to_dict` and `to_record`; unknown keys are a ConfigError (another version)."""
        values = _current_names(values)
        if values.get("optimizer") == FROM_PYTHON:
            del values["optimizer"]
        if unknown := sorted(set(values) - {f.name for f in dataclasses.fields(cls)}):
            raise ConfigError(f"unknown config fields {unknown}: the run was made by another version")
        return cls(**values)


def _current_names(values: dict[str, Any]) -> dict[str, Any]:
    """values with 0.1.0's field names renamed and 0.2's removed fields (REMOVED_FIELDS) dropped."""
    values = {name: value for name, value in values.items() if name not in REMOVED_FIELDS}
    for field in dataclasses.fields(Config):
        old = field.metadata.get("old_name")
        if old in values and field.name not in values:
            values[field.name] = values.pop(old)
    return values


# The Config fields that switch augmentation on (all 0: none).
AUGMENTATION_STRENGTHS = tuple(
    f.name for f in dataclasses.fields(Config) if f.name.startswith("augment_") or f.name == "elastic_alpha"
)


@functools.cache
def field_types() -> dict[str, type]:
    """Field name -> the base type of its values (int, float, str or bool), Optional unwrapped."""
    types = {}
    for name, hint in typing.get_type_hints(Config).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        types[name] = args[0] if args else hint
    return types


def validate(config: Config) -> Config:
    """Checks every field's value; raises ConfigError naming the field (cli.run: its flag)."""

    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{field} {message}, not {getattr(config, field)!r}", field=field)

    types = field_types()
    for field in dataclasses.fields(config):
        choices, value, kind = field.metadata.get("choices"), getattr(config, field.name), types[field.name]
        need(not choices or value in choices, field.name, f"must be one of {', '.join(choices or ())}")
        number = kind is float and isinstance(value, int) and not isinstance(value, bool)
        need(value is None or isinstance(value, kind) or number, field.name, f"must be a {kind.__name__}")
        if kind is float and value is not None:
            need(math.isfinite(value), field.name, "must be a finite number")
            need(abs(value) <= FLOAT32_MAX, field.name, f"must be at most {FLOAT32_MAX:.3g} (a float32)")
    need(-(2**63) <= config.seed < 2**63, "seed", "must fit in 64 bits")
    for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        need(getattr(config, name) >= 1, name, "must be at least 1")
    for name in ("train_size", "keep"):
        need(getattr(config, name) is None or getattr(config, name) >= 1, name, "must be at least 1")
    need(config.epochs <= MAX_EPOCHS, "epochs", f"must be at most {MAX_EPOCHS:,}")
    need(config.lr > 0, "lr", "must be greater than 0")
    need(config.grad_clip is None or config.grad_clip > 0, "grad_clip", "must be greater than 0")
    for name in ("momentum", "label_smoothing", "ema_decay"):
        need(0 <= getattr(config, name) < 1, name, "must be in [0, 1)")
    for name in ("weight_decay", "warmup_epochs", "validation_size", *AUGMENTATION_STRENGTHS):
        need(getattr(config, name) >= 0, name, "must be >= 0")
    need(config.augment_scale < 1, "augment_scale", "must be below 1")
    for name in ("augment_stroke", "augment_lowres"):
        need(getattr(config, name) <= 3, name, "must be at most 3")
    need(config.elastic_sigma > 0, "elastic_sigma", "must be greater than 0")
    return config


def recipe() -> Config:
    """The PyTorch tutorial's recipe: sigmoid LeNet, SGD 0.05, batch 64, 20 epochs.
    Run: `--preset recipe`. Expected: the loss near 2.30 for ~1,300 steps, ~98% after 20 epochs."""
    return Config()


def smoke() -> Config:
    """2 epochs on 2,048 images, end to end. Run: `--preset smoke`. Expected: seconds; accuracy moot."""
    return Config(epochs=2, train_size=2048, init_scheme="flax")


# LeNet-5's layout, as `fast` and `best` train it (their fields not named keep the recipe's values).
LENET5 = {"activation": "relu", "pool": "max", "dense_activation": True, "init_scheme": "flax"}


def fast() -> Config:
    """LeNet-5 trained fast to 99% (time-to-99, tuned on test: docs/results.md). Run: `--preset fast`.
    Expected: ~99% after epoch 1, ~99.3% after 3."""
    return Config(
        **LENET5,
        feature_norm=True,
        epochs=3,
        optimizer="nesterov",
        lr=0.2,
        schedule="warmup-cosine",
        warmup_epochs=0.2,
        label_smoothing=0.1,
        ema_decay=0.999,
    )


def best() -> Config:
    """LeNet-5, augmented, for the lowest error (chosen on validation: docs/results.md). Run: `--preset best`.
    Expected: ~0.5% test error, ~12 minutes on a 2-core CPU."""
    return Config(
        **LENET5,
        epochs=80,
        batch_size=128,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.01,
        schedule="warmup-cosine",
        label_smoothing=0.1,
        ema_decay=0.999,
        augment_translate=1.5,
        augment_rotate=8.0,
        augment_scale=0.08,
        augment_shear=8.0,
        elastic_alpha=1.5,
    )


def handwriting() -> Config:
    """`best`, 30 epochs, with pen and scanner augmentations for real handwriting (docs/results.md).
    Run: `--preset handwriting`. Expected: ~0.5% test error, ~6 minutes on a 2-core CPU."""
    return best().replace(
        epochs=30, augment_stroke=1.0, augment_blur=1.0, augment_lowres=1.0, augment_gamma=0.5
    )


PRESETS: dict[str, Callable[[], Config]] = {p.__name__: p for p in (recipe, smoke, fast, best, handwriting)}
DEFAULT_PRESET = "recipe"


def get_preset(name: str) -> Config:
    """The named preset's config; ConfigError lists the known names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
