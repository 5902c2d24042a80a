"""A run's workdir (README: "What a run writes"), checked before a run uses it; an intact run is kept."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lenet_jax.errors import LenetError, storage_error, storage_fault
from lenet_jax.small_files import FileRefused, read_small_file

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per workdir is then up to the user
    fcntl = None

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
TENSORBOARD_SUBDIR = "tensorboard"
CHECKPOINT_SUBDIR = "checkpoints"
RUN_FILES = (CHECKPOINT_SUBDIR, TENSORBOARD_SUBDIR, METRICS_FILE, CONFIG_FILE)
ASIDE_PREFIX = "replaced-run-"
# The `dataset` of an imported checkpoint (scripts/convert.py): resuming it trains on this data.
IMPORTED_DATASET = "imported: trained outside lenet-jax"

# Fields every metrics row has had since lenet-jax 0.1.0: a line without them is not a row.
ROW_FIELDS = ("epoch", "step", "train_loss", "test_accuracy", "test_total_loss")


def resolve_workdir(
    workdir: str | os.PathLike, error: type[LenetError] = LenetError, fix: str = "pass another --workdir"
) -> Path:
    """The absolute workdir; `error` ending in `fix` if the path cannot be resolved (a symlink loop)."""
    try:
        return Path(workdir).expanduser().resolve(strict=False)
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise error(
            f"workdir {workdir} cannot be resolved ({getattr(e, 'strerror', None) or e}): {fix}"
        ) from None


def missing_folders(path: Path) -> list[Path]:
    """path and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Removes those of `folders` (deepest first) that are empty: a run that failed leaves nothing."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: leave it
            return


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """The absolute workdir, created; LenetError if it cannot be written."""
    path = resolve_workdir(workdir)
    created = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: several may start at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        remove_if_empty(created)
        if (fault := storage_fault(e)) is not None:
            raise storage_error(fault, f"the workdir {workdir} cannot be written") from e
        raise LenetError(
            f"workdir {workdir} is not writable ({e.strerror or e}): pass a --workdir you can write to"
        ) from e
    return path


@contextlib.contextmanager
def workdir_lock(workdir: Path, enabled: bool = True) -> Iterator[None]:
    """Holds WORKDIR/.lock (an flock: freed however the process dies); a second writer gets LenetError."""
    if not enabled or fcntl is None:
        yield
        return
    path = workdir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LenetError(
                f"{workdir} is in use by {holder}: wait until that run ends (or stop it), or pass "
                "another --workdir"
            ) from None
        # Ours only if still the file at that path (the holder before may have removed it meanwhile).
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while locked: a fresh workdir stays clean
            os.unlink(path)
        os.close(fd)


def set_aside(workdir: Path) -> Path | None:
    """Moves a run's files into WORKDIR/replaced-run-<time>/ (--restart --force); None if there are none."""
    present = [name for name in RUN_FILES if os.path.lexists(workdir / name)]
    if not present:
        return None
    aside = workdir / f"{ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.mkdir()
    try:
        for name in present:
            os.replace(workdir / name, aside / name)
    except BaseException:  # half moved: everything back where it was
        restore_set_aside(workdir, aside)
        raise
    return aside


def restore_set_aside(workdir: Path, aside: Path | None) -> None:
    """Puts a set-aside run back (the new one failed before its first checkpoint)."""
    if aside is None or not aside.is_dir():
        return
    for name in RUN_FILES:
        if os.path.lexists(aside / name):
            new = workdir / name
            if new.is_dir() and not new.is_symlink():
                shutil.rmtree(new, ignore_errors=True)
            elif os.path.lexists(new):
                new.unlink()
            os.replace(aside / name, new)
    shutil.rmtree(aside, ignore_errors=True)


class RunGuard(contextlib.AbstractContextManager):
    """An old run set aside until the new one's first checkpoint, else put back; storage faults told."""

    def __init__(self, workdir: str | os.PathLike):
        self.created = missing_folders(resolve_workdir(workdir))
        self.workdir = prepare_workdir(workdir)
        self.aside: Path | None = None  # the old run, while the new one has no checkpoint
        self.saved: int | None = None  # the newest epoch with a checkpoint, once known

    def checkpointed(self, epoch: int) -> None:
        """The new run's checkpoint of `epoch` is on disk: the old run can go."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.saved, self.aside = epoch, None

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            return
        restored = self.aside is not None and self.aside.is_dir()
        restore_set_aside(self.workdir, self.aside)
        remove_if_empty(self.created)
        fault = None if isinstance(error, LenetError) else storage_fault(error)
        if fault is not None:
            raise storage_error(fault, self._intact(restored), where=f"to {self.workdir}") from error

    def _intact(self, restored: bool) -> str:
        """After a storage fault: what the run still has (a failed write is never half-kept)."""
        if restored:
            return "the old run is back in place, as it was"
        if self.saved is None:
            return "no checkpoint was changed"
        if self.saved == 0:
            return "no epoch was saved yet"
        return f"the checkpoint of epoch {self.saved} is intact and the run resumes from it"


def clear_run(workdir: str | os.PathLike) -> None:
    """Deletes a run's checkpoints, metrics, TensorBoard events and config at once."""
    path = resolve_workdir(workdir)
    if path.is_dir():
        with workdir_lock(path):  # never a run that is training
            if (aside := set_aside(path)) is not None:
                shutil.rmtree(aside, ignore_errors=True)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a workdir's metrics.jsonl (other lines skipped; none if it is unreadable)."""
    return scan_metrics(Path(workdir) / METRICS_FILE)[0]


def scan_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(the valid rows, what else was there: None if nothing); read with lenet_jax.small_files' caps."""
    try:
        text = read_small_file(path)
    except FileNotFoundError:
        return [], None
    except FileRefused as e:  # /dev/zero, a FIFO, absurdly large
        return [], str(e).removeprefix(f"{path} ")
    except OSError as e:  # a directory, unreadable
        return [], f"cannot be read ({e.strerror or e})"
    rows, damaged = [], None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if is_row(row):
            rows.append(row)
        elif line.strip():
            damaged = "has lines that are not metrics rows"
    return rows, damaged


def is_row(row: Any) -> bool:
    """Whether `row` is an epoch's metrics row (of any lenet-jax version)."""
    return isinstance(row, dict) and all(
        isinstance(row.get(key), int if key in ("epoch", "step") else (int, float))
        and not isinstance(row[key], bool)
        for key in ROW_FIELDS
    )


def salvage_logs(workdir: Path) -> list[str]:
    """Renames a damaged config.json, metrics.jsonl or tensorboard/ NAME.damaged-<time>: one note each."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    checks = {
        CONFIG_FILE: lambda p: p.is_file() and isinstance(_read_json(p), dict),
        METRICS_FILE: lambda p: p.is_file() and not scan_metrics(p)[1],
        TENSORBOARD_SUBDIR: lambda p: p.is_dir(),
    }
    notes = []
    for name, ok in checks.items():
        path = workdir / name
        if os.path.lexists(path) and not ok(path):
            kept = path.with_name(f"{name}.damaged-{stamp}")
            os.replace(path, kept)
            notes.append(
                f"note: {path} was damaged or not this project's; kept it as {kept.name}, rebuilding"
            )
    return notes


def _read_json(path: Path) -> Any:
    """The JSON value of a small file; None if it is missing, unreadable or not JSON."""
    try:
        return json.loads(read_small_file(path))
    except (OSError, ValueError):  # FileRefused is a ValueError
        return None


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The config record of a workdir's config.json (0.1.0's is the bare record, later ones nest it)."""
    path = Path(workdir) / CONFIG_FILE
    saved = _read_json(path)
    if saved is None:
        raise LenetError(f"{path} is missing or unreadable: pass the --workdir of a training run")
    return saved.get("config", saved) if isinstance(saved, dict) else {}


def write_config(workdir: Path, record: dict[str, Any]) -> None:
    """config.json, written whole or not at all (a temporary file renamed over it)."""
    tmp = workdir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, workdir / CONFIG_FILE)
