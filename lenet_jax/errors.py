"""User-facing errors.

Anything a user can cause (bad flags, bad data, a missing checkpoint, a diverging run, Ctrl-C)
raises a subclass of `LenetError` whose message names the problem and the fix in one line. The
scripts print that line and exit with the error's `exit_code`; only `--debug` shows a traceback.
Everything else is a bug and keeps its traceback.

Exit codes: 2 bad input (flags, data, workdir, checkpoints); 3 the training loss diverged;
4 the machine refused a read or write (disk full, permission denied, read-only file system):
nothing in the input is wrong, and rerunning the same command once it is fixed resumes;
5 the device ran out of memory (a batch too large for it); 128 + N stopped by signal N
(130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class LenetError(Exception):
    """Base class of errors caused by input the user can fix."""

    exit_code = 2


class ConfigError(LenetError):
    """An invalid configuration value or flag. field: the Config field the message starts with,
    if any (the scripts print it as its flag: lenet_jax.cli.run)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


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
    """What XLA's RESOURCE_EXHAUSTED out of memory asked for ("32.4 GB", or "memory"); None for
    anything else, a full disk (tensorstore's RESOURCE_EXHAUSTED) included."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text or "memory" not in text.lower():
        return None
    asked = re.search(r"(\d+) bytes", text)
    return f"{int(asked.group(1)) / 1e9:.1f} GB" if asked else "memory"


@contextlib.contextmanager
def out_of_memory_names(flag: str) -> Iterator[None]:
    """Turns a device out-of-memory error inside the block into DeviceMemoryError (one line
    naming `flag`, the setting to lower); the checkpoints already written stay as they were."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError; others pass through
        asked = device_memory_asked(e)
        if asked is None:
            raise
        raise DeviceMemoryError(
            f"the device ran out of memory (asked for {asked}): lower {flag}; what was saved is intact"
        ) from e


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
    """The OSError of a storage fault (STORAGE_FAULTS) behind `error`, following the chain of
    causes (libraries such as orbax wrap it); None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_FAULTS:
            return error
        # C++ libraries report one in their own exception types: tensorstore (orbax's array
        # writer) as "... No space left on device [os_error_code='28']", array_record (tfds's
        # writer) as "write() failed: No space left on device".
        if not isinstance(error, OSError):
            code = re.search(r"os_error_code='(\d+)'", str(error))
            codes = [int(code[1])] if code else [c for c in STORAGE_FAULTS if os.strerror(c) in str(error)]
            if codes and codes[0] in STORAGE_FAULTS:
                return OSError(codes[0], os.strerror(codes[0]))
        error = error.__cause__ or error.__context__
    return None


def storage_error(fault: OSError, consequence: str, where: object = None) -> StorageError:
    """One line: which file could not be written (else `where`) and why, what that means, what
    to do."""
    place = fault.filename or where
    place = f" {place}" if place else ""
    return StorageError(
        f"cannot write{place} ({fault.strerror or errno.errorcode.get(fault.errno, fault.errno)}): "
        f"{consequence}; {STORAGE_FAULTS[fault.errno]}, then rerun the same command"
    )
