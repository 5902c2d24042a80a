"""What the libraries lenet-jax calls (tfds, orbax) log on their own, kept off the console.

tfds warns "Using custom data configuration" for every local data folder and orbax warns
"read_only=True" for every read-only checkpoint manager: expected, nothing to act on. The
scripts silence absl's INFO/WARNING globally (`lenet_jax.cli.quiet_library_logs`); the Python
API silences them only around its own calls (`quiet()`), leaving the user's logging as it is.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading


class _BelowError(logging.Filter):
    """Drops records below ERROR logged by the threads it was installed for."""

    def __init__(self):
        super().__init__()
        self.threads: dict[int, int] = {}  # thread id -> nesting depth
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.thread not in self.threads


_FILTER = _BelowError()


@contextlib.contextmanager
def quiet():
    """absl's (tfds's, orbax's) INFO and WARNING records of this thread are dropped inside."""
    logger = logging.getLogger("absl")
    me = threading.get_ident()
    with _FILTER._lock:
        if not _FILTER.threads:
            logger.addFilter(_FILTER)
        _FILTER.threads[me] = _FILTER.threads.get(me, 0) + 1
    try:
        yield
    finally:
        with _FILTER._lock:
            _FILTER.threads[me] -= 1
            if not _FILTER.threads[me]:
                del _FILTER.threads[me]
            if not _FILTER.threads:
                logger.removeFilter(_FILTER)


class _HoldNewThreads(logging.Filter):
    """Holds back the records of threads other than `known`; once `dropping`, drops them."""

    def __init__(self, known: set[int]):
        super().__init__()
        self.known = known
        self.held: list[logging.LogRecord] = []
        self.dropping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread in self.known:
            return True
        if not self.dropping:
            self.held.append(record)
        return False


@contextlib.contextmanager
def helper_threads_quiet_on_failure(join_timeout: float = 30.0):
    """For a call that starts helper threads (an orbax save): what they log through absl is
    held back, and logged at the end if the call returns. If it raises (a full disk, a second
    Ctrl-C), the helpers are waited for and what they logged, or log later, is dropped: they
    fail with the same fault, which the caller reports in one line."""
    logger = logging.getLogger("absl")
    before = set(threading.enumerate())
    hold = _HoldNewThreads({t.ident for t in before if t.ident is not None})
    logger.addFilter(hold)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _ClosedLoopCallbacks(previous_hook)
    try:
        yield
    except BaseException:
        hold.dropping = True  # both stay installed: helpers may still report after this returns
        _drop_unretrieved_storage_faults()
        for thread in [t for t in threading.enumerate() if t not in before]:
            thread.join(timeout=join_timeout)
        hold.held.clear()
        raise
    if isinstance(sys.unraisablehook, _ClosedLoopCallbacks):
        sys.unraisablehook = previous_hook
    logger.removeFilter(hold)
    for record in hold.held:
        logger.handle(record)


class _ClosedLoopCallbacks:
    """An unraisablehook that drops one report: tensorstore's threads completing the writes of
    a failed save call back into its event loop, already closed ("Event loop is closed")."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop and threading.current_thread() is not threading.main_thread()):
            self.previous(unraisable)


class _UnretrievedStorageFault(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records of storage faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lenet_jax.errors import storage_fault

        exception = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in str(record.msg) and storage_fault(exception) is not None)


def _drop_unretrieved_storage_faults() -> None:
    """The writes of a failed save that failed in turn are garbage-collected later, and asyncio
    then logs each one's exception: a full disk already reported."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedStorageFault) for f in logger.filters):
        logger.addFilter(_UnretrievedStorageFault())
