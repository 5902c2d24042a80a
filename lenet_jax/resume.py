"""Where a run starts: from scratch, or from its newest checkpoint once it is checked to fit."""

from __future__ import annotations

from typing import Any

import jax

from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import ConfigError, LenetError
from lenet_jax.model import count_params
from lenet_jax.workdir import IMPORTED_DATASET, is_row

# Fields a resume may change: not the model, the data order or the updates (speed: the same function).
SAFE_TO_CHANGE_ON_RESUME = frozenset({"epochs", "log_every", "keep", "eval_batch_size", "speed"})
# The recipe's sigmoid + PyTorch init with SGD sits on a plateau first (the tutorial's too).
PLATEAU_NOTE = (
    "Note: the loss stays near 2.30 for the first ~1,300 steps (the tutorial's sigmoid plateau), then falls"
)


def start_state(
    trainer: Any, checkpoints: Checkpoints, dataset_source: str, resume: bool, say
) -> tuple[Any, list[dict]]:
    """(fresh or the newest checkpoint's state, the checkpoints' metrics rows); says which (`say`)."""
    epochs = checkpoints.epochs()
    devices = f"{jax.device_count()} {jax.default_backend()} device(s), {jax.process_count()} process(es)"
    say(f"LeNet: {count_params(trainer.abstract_state().params):,} parameters; {devices}")
    if not epochs:
        config = trainer.config
        recipe_like = (config.activation, config.init_scheme, config.optimizer) == ("sigmoid", "torch", "sgd")
        if recipe_like and not trainer.from_python:
            say(PLATEAU_NOTE)
        return trainer.new_state(), []
    if not resume:
        raise LenetError(
            f"{checkpoints.directory.parent} already holds checkpoints (epochs "
            f"{', '.join(map(str, epochs))}): add --force to --restart to replace them, "
            "or pass another --workdir"
        )
    newest = checkpoints.restore_meta(epochs[-1])
    check_resumable(newest, trainer.config, dataset_source, trainer.from_python)
    # Against an eval_shape target: another structure (a Python optimizer's, say) is refused unread.
    state = checkpoints.restore_state(epochs[-1], trainer.abstract_state())
    # The older ones only for their metrics rows (a damaged metrics.jsonl): a damaged one blocks nothing.
    metas = {**checkpoints.readable_metas(epochs[:-1], note=say), epochs[-1]: newest}
    if epochs[-1] >= trainer.config.epochs:
        done, more = trainer.config.epochs, "to train more, raise epochs: --epochs N, or epochs=N in Python"
        say(f"Already complete: {done} epoch{'s' if done != 1 else ''} trained ({more})")
    else:
        say(f"Resuming from the checkpoint of epoch {epochs[-1]} (step {newest['step']})")
    if trainer.from_python:
        say(
            "The optimizer passed from Python has the state structure of the checkpoint's; "
            "its hyperparameters cannot be checked"
        )
    saved_speed = newest["config"]["speed"]
    if saved_speed != trainer.config.speed:
        say(
            f"Note: the checkpoint trained with --speed {saved_speed}, this run with "
            f"{trainer.config.speed}: the same function, but not bit-identical to an uninterrupted run"
        )
    rows = [meta.get("metrics") for _, meta in sorted(metas.items())]
    return state, [row for row in rows if is_row(row)]


def check_resumable(meta: dict[str, Any], config: Config, dataset_source: str, from_python: bool) -> None:
    """ConfigError naming every difference from the checkpoint's run that changes the results."""
    saved = meta["config"]
    current = config.to_record(from_python)
    unsafe = (set(current) | set(saved)) - SAFE_TO_CHANGE_ON_RESUME
    if config.schedule != "constant" and not from_python:
        unsafe.add("epochs")  # a decaying schedule is stretched over all epochs
    differences = [
        f"{name}: checkpoint {saved.get(name)!r}, now {current.get(name)!r}"
        for name in sorted(unsafe)
        if saved.get(name) != current.get(name)
    ]
    if meta.get("dataset") not in (dataset_source, IMPORTED_DATASET):
        differences.append(f"dataset: checkpoint {meta.get('dataset')}, now {dataset_source}")
    if differences:
        differ = f"cannot resume: this run differs from its checkpoint in {'; '.join(differences)}"
        raise ConfigError(f"{differ}. Use the checkpoint's settings or another --workdir")
