"""User errors: a `LenetError` names the problem and the fix in one line, and exits with its `exit_code`.
Anything else is a bug and keeps its traceback. Stopped by signal N: exit 128 + N."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class LenetError(Exception):
    """Errors caused by input the user can fix. field: a Config field it names (cli.run prints its flag)."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(LenetError):
    """An invalid configuration value."""


class DataError(LenetError):
    """Missing, malformed or unreachable training data."""


class CheckpointError(LenetError):
    """A missing, unreadable or incompatible checkpoint."""


class ConversionError(LenetError):
    """A PyTorch file that cannot (or must not) be imported, or a checkpoint that cannot be exported."""


class DivergedError(LenetError):
    """The training loss became NaN or infinite."""

    exit_code = 3


class StorageError(LenetError):
    """The file system refused a write (or read): disk full, permission denied, read-only."""

    exit_code = 4


class DeviceMemoryError(LenetError):
    """The accelerator (or XLA:CPU) could not allocate what a jitted call needed."""

    exit_code = 5


def device_memory_asked(error: BaseException) -> str | None:
    """What XLA's out-of-memory error asked for ("32.4 GB", or "memory"); None for anything else."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text or "memory" not in text.lower():
        return None
    asked = re.search(r"(\d+) bytes", text)
    return f"{int(asked.group(1)) / 1e9:.1f} GB" if asked else "memory"


@contextlib.contextmanager
def out_of_memory_names(name: str, now: object = None) -> Iterator[None]:
    """Device out of memory inside -> DeviceMemoryError naming what to lower (a Config field: cli.run)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError; others pass through
        if (asked := device_memory_asked(e)) is None:
            raise
        value = "" if now is None else f" (now {now})"
        message = f"the device ran out of memory (asked for {asked}): lower {name}{value}; "
        message += "what was saved is intact"
        raise DeviceMemoryError(message, field=name if name.isidentifier() else None) from e


class TrainingInterrupted(LenetError):
    """SIGINT or SIGTERM stopped training; the run can be resumed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# errno -> what to do about it. Faults of the machine, not of the input.
STORAGE_FAULTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    errno.EROFS: "use a writable file system",
    errno.EIO: "check the disk",
}


def storage_fault(error: BaseException | None) -> OSError | None:
    """The OSError of a storage fault (STORAGE_FAULTS) in `error`'s chain of causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_FAULTS:
            return error
        # C++ libraries say it in text: tensorstore "[os_error_code='28']", array_record strerror.
        if not isinstance(error, OSError):
            code = re.search(r"os_error_code='(\d+)'", str(error))
            codes = [int(code[1])] if code else [c for c in STORAGE_FAULTS if os.strerror(c) in str(error)]
            if codes and codes[0] in STORAGE_FAULTS:
                return OSError(codes[0], os.strerror(codes[0]))
        error = error.__cause__ or error.__context__
    return None


def storage_error(fault: OSError, consequence: str, where: object = None) -> StorageError:
    """One line: which file (else `where`) could not be written and why, what it means, what to do."""
    place = fault.filename or where
    place = f" {place}" if place else ""
    return StorageError(
        f"cannot write{place} ({fault.strerror or errno.errorcode.get(fault.errno, fault.errno)}): "
        f"{consequence}; {STORAGE_FAULTS[fault.errno]}, then rerun the same command"
    )
