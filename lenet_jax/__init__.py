"""lenet-jax: the classic LeNet digit recognizer, trained in JAX/Flax.

    from lenet_jax import Config, get_preset, train_and_evaluate, load_predictor

Names are imported on first use: `import lenet_jax` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_MODULES = {
    "config": ("Config", "PRESETS", "get_preset"),
    "train": ("train_and_evaluate", "TrainResult", "make_trainer", "train_epoch"),
    "model": ("LeNet", "model_from_config"),
    "optimizers": ("OPTIMIZERS", "build_optimizer"),
    "evaluation": ("evaluate_checkpoint",),
    "checkpoints": ("load_weights",),
    "predict": ("load_predictor",),
    "torch_checkpoint": ("import_torch_checkpoint", "export_torch_checkpoint"),
}
_EXPORTS = {name: f"lenet_jax.{module}" for module, names in _MODULES.items() for name in names}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'lenet_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
