"""Reading small files with size and line caps checked first: /dev/zero or a FIFO is FileRefused."""

from __future__ import annotations

import os
import stat

# Far above what a run writes (a metrics row is ~0.5 KB, a meta ~10 KB), far below a memory problem.
MAX_BYTES = 16 * 2**20
MAX_LINES = 100_000


class FileRefused(ValueError):
    """A file that is not a regular file, or larger than its cap: left unread."""


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _open_small(path: str | os.PathLike, max_bytes: int) -> int:
    """A read-only descriptor of a regular file of at most max_bytes (O_NONBLOCK: a FIFO opens at once)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{os.fspath(path)} is not a regular file")
        if info.st_size > max_bytes:
            raise FileRefused(f"{os.fspath(path)} is {_size(info.st_size)}, more than {_size(max_bytes)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_small_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> None:
    """FileRefused unless path is a regular file of at most max_bytes (for files a library reads)."""
    os.close(_open_small(path, max_bytes))


def read_small_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES, max_lines: int = MAX_LINES) -> str:
    """The text (undecodable bytes replaced) of a regular file of at most max_bytes and max_lines."""
    with os.fdopen(_open_small(path, max_bytes), "rb") as file:
        data = file.read(max_bytes + 1)  # bounded even if the file grows meanwhile
    if len(data) > max_bytes:
        raise FileRefused(f"{os.fspath(path)} is more than {_size(max_bytes)}")
    if data.count(b"\n") > max_lines:
        raise FileRefused(f"{os.fspath(path)} has more than {max_lines:,} lines")
    return data.decode("utf-8", errors="replace")
