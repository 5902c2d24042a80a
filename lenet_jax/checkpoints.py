"""Per-epoch checkpoints with orbax: `WORKDIR/checkpoints/<epoch>/{params,train_state,meta}`.

Items per epoch, so that each reader restores only what it needs:
- `params`: the model parameters (what evaluation and prediction read);
- `ema_params`: only in runs with --ema-decay: the averaged parameters, which evaluation and
  prediction read instead when present;
- `train_state`: step, optimizer state and rng (what resuming needs besides params);
- `meta`: JSON with the epoch, step, the run's config and that epoch's metrics.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-save never leaves a half-written checkpoint that looks finished.
Restores take abstract targets (`jax.eval_shape`), so no real init runs just to get shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from lenet_jax.errors import CheckpointError
from lenet_jax.steps import TrainState

CHECKPOINT_SUBDIR = "checkpoints"
EMA_ITEM = "ema_params"
ITEMS = ("params", "train_state", "meta", EMA_ITEM)


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where the epoch checkpoints of a workdir live (absolute: orbax requires it)."""
    return Path(workdir).expanduser().resolve() / CHECKPOINT_SUBDIR


class Checkpoints:
    """The epoch checkpoints of one workdir."""

    def __init__(self, workdir: str | os.PathLike, keep: int | None = None, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} does not exist: pass the --workdir of a training run")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            read_only=read_only,
            # Synchronous: a save of this small model takes milliseconds, and a save that has
            # returned is on disk, which keeps crash and signal handling simple.
            enable_async_checkpointing=False,
            # A save cut short by a crash leaves a temporary directory; remove it on start.
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def epochs(self) -> list[int]:
        """Epochs with a complete checkpoint, ascending."""
        self._manager.reload()  # another process (or a crash) may have changed the directory
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def save(self, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Writes epoch's checkpoint; returns when it is complete on disk."""
        train_state = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
        items = {
            "params": ocp.args.StandardSave(state.params),
            "train_state": ocp.args.StandardSave(train_state),
            "meta": ocp.args.JsonSave(meta),
        }
        if state.ema_params is not None:
            items[EMA_ITEM] = ocp.args.StandardSave(state.ema_params)
        self._manager.save(epoch, args=ocp.args.Composite(**items))
        self._manager.wait_until_finished()

    def _check_epoch(self, epoch: int) -> None:
        epochs = self.epochs()
        if not epochs:
            raise CheckpointError(
                f"{self.directory} has no checkpoints: train first, or pass another --workdir"
            )
        if epoch not in epochs:
            raise CheckpointError(
                f"no checkpoint for epoch {epoch} in {self.directory}; "
                f"available epochs: {', '.join(map(str, epochs))}"
            )

    def _restore(self, epoch: int, **items: ocp.args.CheckpointArgs) -> Any:
        self._check_epoch(epoch)
        try:
            return self._manager.restore(epoch, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged file
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CheckpointError(
                f"checkpoint for epoch {epoch} in {self.directory} is unreadable ({reason}): it is "
                f"damaged; delete {self.directory / str(epoch)} to fall back to the epoch before, "
                "or pick another --epoch"
            ) from e

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        return self._restore(epoch, meta=ocp.args.JsonRestore())["meta"]

    def restore_params(self, epoch: int, abstract_params: Any, item: str = "params") -> Any:
        """The params of `epoch` (item EMA_ITEM: the averaged ones), shaped like abstract_params
        (a jax.eval_shape result)."""
        return self._restore(epoch, **{item: ocp.args.StandardRestore(abstract_params)})[item]

    def restore_state(self, epoch: int, abstract_state: TrainState) -> TrainState:
        """The full train state of `epoch`, for resuming."""
        abstract_train_state = {
            "step": abstract_state.step,
            "opt_state": abstract_state.opt_state,
            "rng": abstract_state.rng,
        }
        items = {
            "params": ocp.args.StandardRestore(abstract_state.params),
            "train_state": ocp.args.StandardRestore(abstract_train_state),
        }
        if abstract_state.ema_params is not None:
            items[EMA_ITEM] = ocp.args.StandardRestore(abstract_state.ema_params)
        restored = self._restore(epoch, **items)
        train_state = restored["train_state"]
        return TrainState(
            step=train_state["step"],
            params=restored["params"],
            opt_state=train_state["opt_state"],
            rng=train_state["rng"],
            ema_params=restored.get(EMA_ITEM),
        )

    def close(self) -> None:
        self._manager.close()

    # A context manager: the orbax manager runs a background thread, which must be stopped on
    # every exit (an error left open makes orbax print a traceback at interpreter exit).
    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
