"""Per-epoch orbax checkpoints (ITEMS); restore targets checked first: not fitting is told from damaged."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lenet_jax import parallel
from lenet_jax.config import Config
from lenet_jax.errors import CheckpointError, ConfigError
from lenet_jax.library_logs import helper_threads_quiet_on_failure, quiet
from lenet_jax.model import init_params, model_from_config
from lenet_jax.small_files import FileRefused, check_small_file
from lenet_jax.steps import TrainState
from lenet_jax.workdir import CHECKPOINT_SUBDIR, resolve_workdir

EMA_ITEM = "ema_params"
ITEMS = ("params", "train_state", "meta", EMA_ITEM)
# 1: lenet-jax 0.1.0 (no version in the meta); 2: optimizer source and provenance recorded;
# 3: `speed` in the config, instead of conv_impl and steps_per_call (0.3.0).
FORMAT_VERSION = 3
LEGACY_CUSTOM_OPTIMIZER = "custom (passed from Python)"  # version 1's optimizer_source
# The JSON files orbax reads whole: of a checkpoint, and of each of its items (`meta`'s is the meta).
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
ITEM_JSON_FILES = ("metadata", "_METADATA", "_sharding")
# Room left beyond twice the arrays' bytes before a save is attempted (metadata, JSON files).
SAVE_MARGIN = 2**20


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where the epoch checkpoints of a workdir live (absolute: orbax requires it)."""
    workdir = resolve_workdir(workdir, CheckpointError, "pass the --workdir of a training run")
    return workdir / CHECKPOINT_SUBDIR


def describe(tree: Any) -> dict[str, str]:
    """'path' -> 'shape dtype' for every array of a pytree (arrays, ShapeDtypeStructs or orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): f"{tuple(leaf.shape)} {leaf.dtype}"
        for path, leaf in leaves
    }


def _refused(path: Path) -> str | None:
    """Why a JSON file that orbax reads whole must not be read; None if it may be, or is missing."""
    try:
        check_small_file(path)
    except FileNotFoundError:
        return None
    except (OSError, FileRefused) as e:
        return str(e).removeprefix(str(path)).strip()
    return None


def _state_items(state: TrainState, arg: Callable[[Any], ocp.args.CheckpointArgs]) -> dict[str, Any]:
    """The checkpoint items of a (real or abstract) train state, each wrapped in arg."""
    train_state = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    items = {"params": arg(state.params), "train_state": arg(train_state)}
    if state.ema_params is not None:
        items[EMA_ITEM] = arg(state.ema_params)
    return items


def _differences(saved: dict[str, str], wanted: dict[str, str], limit: int = 3) -> list[str]:
    lines = [
        f"{path}: checkpoint {saved.get(path, 'has none')}, now {wanted.get(path, 'none')}"
        for path in sorted(set(saved) | set(wanted))
        if saved.get(path) != wanted.get(path)
    ]
    return lines[:limit] + ([f"{len(lines) - limit} more"] if len(lines) > limit else [])


class Checkpoints(contextlib.AbstractContextManager):
    """The epoch checkpoints of one workdir; a context manager, as orbax's thread must be stopped."""

    def __init__(self, workdir: str | os.PathLike, keep: int | None = None, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} does not exist: pass the --workdir of a training run")
        self._check_step_metadata()
        with quiet():  # orbax warns about read_only=True, which is what is asked for
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=False,  # a save takes milliseconds; one that returned is on disk
                cleanup_tmp_directories=not read_only,  # what a save cut short by a crash left behind
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _check_step_metadata(self) -> None:
        """CheckpointError naming an epoch whose metadata orbax must not read whole (/dev/zero, 4 GiB)."""
        folders = self.directory.iterdir() if self.directory.is_dir() else []
        for folder in sorted(f for f in folders if f.name.isdigit() and f.is_dir()):
            if reason := _refused(folder / CHECKPOINT_METADATA):
                raise CheckpointError(
                    f"the checkpoint of epoch {folder.name} is damaged (its {CHECKPOINT_METADATA} {reason}): "
                    f"move {folder} out of {self.directory} to use the other epochs"
                ) from None

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()

    def epochs(self) -> list[int]:
        """Epochs with a complete checkpoint, ascending."""
        self._manager.reload()  # another process (or a crash) may have changed the directory
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Writes epoch's checkpoint (meta gets the format version); returns when it is on disk."""
        items = _state_items(state, ocp.args.StandardSave)
        items["meta"] = ocp.args.JsonSave({"format_version": FORMAT_VERSION, **meta})
        self._check_space(epoch, state)
        try:
            # A failed save's helper threads must end before the manager closes; their logs repeat its fault.
            with helper_threads_quiet_on_failure():
                self._manager.save(epoch, args=ocp.args.Composite(**items))
                self._manager.wait_until_finished()
        except BaseException:
            if jax.process_count() == 1:  # the half-written checkpoint: space back on a full disk
                for partial in self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(partial, ignore_errors=True)
            raise

    def _check_space(self, epoch: int, state: TrainState) -> None:
        """OSError(ENOSPC) up front: orbax's writes failing on a full disk print uncatchable tracebacks."""
        arrays = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(state))
        needed = 2 * arrays + SAVE_MARGIN
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return  # cannot tell: let the save find out
        if free < needed:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: {free / 2**20:.1f} MiB free, the checkpoint of epoch "
                f"{epoch} needs about {needed / 2**20:.1f} MiB",
                str(self.directory),
            )

    def _check_epoch(self, epoch: int | None) -> int:
        """epoch (None: the newest) once it has a checkpoint; CheckpointError naming those there are."""
        epochs = self.epochs()
        if not epochs:
            raise CheckpointError(
                f"{self.directory} has no checkpoints: train first, or pass another --workdir"
            )
        if epoch is not None and epoch not in epochs:
            raise CheckpointError(
                f"no checkpoint for epoch {epoch} in {self.directory}; "
                f"available epochs: {', '.join(map(str, epochs))}"
            )
        return epochs[-1] if epoch is None else epoch

    def _damaged(self, epoch: int, error: BaseException) -> CheckpointError:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        older = [e for e in self.epochs() if e < epoch]
        fallback = (
            f"epoch {older[-1]} is the newest before it (evaluate.py --epoch {older[-1]} reads it; to "
            f"resume training from it, move {self.directory / str(epoch)} out of {self.directory})"
            if older
            else "no earlier epoch is there to fall back to"
        )
        return CheckpointError(f"the checkpoint of epoch {epoch} is damaged ({reason}): {fallback}")

    def _check_fits(self, epoch: int, item: str, target: Any) -> None:
        """CheckpointError if `item` of `epoch` (maybe intact) does not have the target's structure."""
        path = self.directory / str(epoch) / item
        if not path.is_dir():  # every item has arrays (the step, the rng, the weights)
            raise self._damaged(epoch, FileNotFoundError(f"no {item} in it"))
        try:
            with quiet(), ocp.StandardCheckpointer() as reader:
                metadata = reader.metadata(path).item_metadata
            if metadata is None:
                raise FileNotFoundError(f"the metadata of its {item} is missing")
            saved = describe(metadata.tree)
        except Exception as e:  # noqa: BLE001 - unreadable metadata: damaged
            raise self._damaged(epoch, e) from e
        wanted = describe(target)
        if saved != wanted:
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} is intact but does not fit this run's {item} "
                f"({'; '.join(_differences(saved, wanted))}): it was made with another model, "
                "optimizer or version; use the settings it was made with (its config.json)"
            )

    def _check_small_files(self, epoch: int, items) -> None:
        """A damaged checkpoint error if a JSON file orbax reads whole is not small and regular."""
        folder = self.directory / str(epoch)
        names = [CHECKPOINT_METADATA] + [f"{item}/{name}" for item in items for name in ITEM_JSON_FILES]
        for name in names:
            if reason := _refused(folder / name):
                raise self._damaged(epoch, ValueError(f"its {name} {reason}")) from None

    def _restore(self, epoch: int, **items: ocp.args.CheckpointArgs) -> Any:
        self._check_epoch(epoch)
        self._check_small_files(epoch, items)
        for item, args in items.items():
            if isinstance(args, ocp.args.StandardRestore):
                self._check_fits(epoch, item, args.item)
        try:
            with quiet():
                return self._manager.restore(epoch, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged file
            raise self._damaged(epoch, e) from e

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        """Epoch's meta, in the current format (older versions upgraded; newer ones refused)."""
        meta = self._restore(epoch, meta=ocp.args.JsonRestore())["meta"]
        fields = {"config": dict, "step": int, "metrics": (dict, type(None))}
        if not (isinstance(meta, dict) and all(isinstance(meta.get(k), t) for k, t in fields.items())):
            raise self._damaged(epoch, ValueError("its meta lacks the config or the step"))
        return upgrade_meta(meta, f"the checkpoint of epoch {epoch} in {self.directory}")

    def readable_metas(self, epochs: list[int], note: Callable[[str], Any] | None = None) -> dict[int, dict]:
        """epoch -> meta of those of `epochs` that can be read; a damaged one is left out (note told)."""
        metas = {}
        for epoch in epochs:
            try:
                metas[epoch] = self.restore_meta(epoch)
            except CheckpointError as e:
                if note is not None:
                    note(f"note: {e}; its metrics row is taken from metrics.jsonl if there")
        return metas

    def restore_params(self, epoch: int, abstract_params: Any, item: str = "params") -> Any:
        """The params of `epoch` (item EMA_ITEM: the averaged ones), shaped like abstract_params."""
        return self._restore(epoch, **{item: ocp.args.StandardRestore(abstract_params)})[item]

    def restore_state(self, epoch: int, abstract_state: TrainState) -> TrainState:
        restored = self._restore(epoch, **_state_items(abstract_state, ocp.args.StandardRestore))
        return TrainState(
            params=restored["params"], ema_params=restored.get(EMA_ITEM), **restored["train_state"]
        )


def upgrade_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """A meta of any earlier format version in the current one (new fields at their defaults)."""
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version}, newer than this lenet-jax reads "
            f"({FORMAT_VERSION}): upgrade lenet-jax"
        )
    source = meta.get("optimizer_source")
    if version == 1:  # 0.1.0 recorded a Python optimizer's run with the config's optimizer fields
        source = {"kind": "python" if source == LEGACY_CUSTOM_OPTIMIZER else "config"}
    record = dict(meta["config"])
    if version < 3:  # 0.2's execution fields: both at their "off" values meant the plain program
        plain = record.get("conv_impl") == "xla" and record.get("steps_per_call") == 1
        record["speed"] = "plain" if plain else "auto"
    try:
        config = Config.from_dict(record)
    except ConfigError as e:
        raise CheckpointError(
            f"{where} records a config this lenet-jax cannot use ({e}): it was made by another "
            "version, or its meta is damaged"
        ) from None
    from_python = isinstance(source, dict) and source.get("kind") == "python"
    upgraded = {"format_version": FORMAT_VERSION, "config": config.to_record(from_python)}
    return {**meta, **upgraded, "optimizer_source": source}


@dataclasses.dataclass
class Weights:
    """One epoch's parameters with the config (and metadata) of the run that made them."""

    epoch: int
    config: Config
    params: Any
    meta: dict[str, Any]
    averaged: bool = False  # params are the run's moving average of the weights


RestoredParams = Weights  # the name of lenet-jax 0.1.0


def load_weights(workdir: str | os.PathLike, epoch: int | None = None, averaged: bool = True) -> Weights:
    """The params (averaged: the moving average where kept) of one epoch's checkpoint (newest by default)."""
    with Checkpoints(workdir, read_only=True) as checkpoints:
        epoch = checkpoints._check_epoch(epoch)
        meta = checkpoints.restore_meta(epoch)
        config = Config.from_dict(meta["config"])
        model = model_from_config(config)
        # eval_shape: the params' shapes and dtypes without running init, on this process's devices.
        abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
        abstract = parallel.with_sharding(abstract, parallel.replicated(parallel.data_mesh()))
        averaged = averaged and config.averages_weights
        params = checkpoints.restore_params(epoch, abstract, EMA_ITEM if averaged else "params")
    return Weights(epoch=epoch, config=config, params=params, meta=meta, averaged=averaged)
