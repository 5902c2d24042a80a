"""tfds's and orbax's logs with nothing to act on, kept off the console (the API: only in `quiet()`)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

_QUIET = threading.local()  # depth: how many quiet() blocks this thread is in


def _below_error_outside_quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not getattr(_QUIET, "depth", 0)  # runs in the logging thread


@contextlib.contextmanager
def quiet():
    """absl's (tfds's, orbax's) INFO and WARNING records of this thread are dropped inside."""
    # Added once (addFilter skips a filter it holds), and kept: outside quiet() it passes everything.
    logging.getLogger("absl").addFilter(_below_error_outside_quiet)
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1


@contextlib.contextmanager
def helper_threads_quiet_on_failure(join_timeout: float = 30.0):
    """Helper threads' (an orbax save's) absl records: logged if the call returns, dropped if it raises."""
    logger = logging.getLogger("absl")
    before = set(threading.enumerate())
    known, held, failed = {t.ident for t in before}, [], threading.Event()

    def hold(record: logging.LogRecord) -> bool:
        """Passes the records of threads that were there; holds back the others' (drops, once failed)."""
        if record.thread not in known and not failed.is_set():
            held.append(record)
        return record.thread in known

    logger.addFilter(hold)
    previous_hook = sys.unraisablehook

    def closed_loop_hook(unraisable) -> None:
        """Drops tensorstore's "Event loop is closed": the failed save's writes completing late."""
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop and threading.current_thread() is not threading.main_thread()):
            previous_hook(unraisable)

    sys.unraisablehook = closed_loop_hook
    try:
        yield
    except BaseException:
        failed.set()  # both stay installed: helpers may still report after this returns
        # The writes that failed in turn are collected later, asyncio logging each one's fault.
        logging.getLogger("asyncio").addFilter(_not_an_unretrieved_storage_fault)
        for thread in [t for t in threading.enumerate() if t not in before]:
            thread.join(timeout=join_timeout)
        held.clear()
        raise
    if sys.unraisablehook is closed_loop_hook:
        sys.unraisablehook = previous_hook
    logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def _not_an_unretrieved_storage_fault(record: logging.LogRecord) -> bool:
    """False for asyncio's "exception was never retrieved" records of storage faults."""
    from lenet_jax.errors import storage_fault

    exception = record.exc_info[1] if record.exc_info else None
    return not ("never retrieved" in str(record.msg) and storage_fault(exception) is not None)
