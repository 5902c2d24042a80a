"""lenet-jax: the classic LeNet digit recognizer, trained in JAX/Flax.

The public API (each name documented where it is defined):

    from lenet_jax import Config, get_preset, train_and_evaluate, load_predictor

- `Config`, `get_preset`, `PRESETS`: configs as code (lenet_jax.config).
- `train_and_evaluate(config, workdir, optimizer=None, data_dir=None)` -> `TrainResult`; and
  `make_trainer`, `train_epoch` for a loop of your own (lenet_jax.train).
- `LeNet`, `model_from_config` (lenet_jax.model); `OPTIMIZERS`, `build_optimizer`
  (lenet_jax.optimizers): the model and the optimizer registry.
- `evaluate_checkpoint`, `load_weights`, `load_predictor`: use a run's checkpoints.
- `import_torch_checkpoint`, `export_torch_checkpoint`: the PyTorch tutorial's `.pth` files.

Names are imported on first use, so `import lenet_jax` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_EXPORTS = {
    "Config": "lenet_jax.config",
    "PRESETS": "lenet_jax.config",
    "get_preset": "lenet_jax.config",
    "train_and_evaluate": "lenet_jax.train",
    "TrainResult": "lenet_jax.train",
    "make_trainer": "lenet_jax.train",
    "train_epoch": "lenet_jax.train",
    "LeNet": "lenet_jax.model",
    "model_from_config": "lenet_jax.model",
    "OPTIMIZERS": "lenet_jax.optimizers",
    "build_optimizer": "lenet_jax.optimizers",
    "evaluate_checkpoint": "lenet_jax.evaluation",
    "load_weights": "lenet_jax.checkpoints",
    "load_predictor": "lenet_jax.predict",
    "import_torch_checkpoint": "lenet_jax.torch_checkpoint",
    "export_torch_checkpoint": "lenet_jax.torch_checkpoint",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'lenet_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
