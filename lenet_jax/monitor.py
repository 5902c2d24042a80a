"""What the training loop watches between its jitted calls: the losses and stop signals."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lenet_jax import parallel
from lenet_jax.errors import DivergedError, TrainingInterrupted


class LossMonitor(contextlib.AbstractContextManager):
    """One epoch's step losses, read from the device every `every` steps (`show`: printed, with a bar)."""

    def __init__(self, step: int, epoch: int, every: int, diverged_hint: str, steps: int = 0, show=False):
        self.step, self.epoch, self.every, self.diverged_hint = step, epoch, every, diverged_hint
        self.pending: list[tuple[jax.Array, int]] = []
        self.losses: list[float] = []  # the epoch's losses read so far
        self.show, self._bar = show, None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, unit="step")

    def add(self, losses: jax.Array, count: int) -> list[tuple[int, float]]:
        """One call's losses (the first `count` real); returns (and prints) the (step, loss) pairs due."""
        self.pending.append((losses, count))
        first, self.step = self.step + 1, self.step + count
        if self._bar is not None:
            self._bar.update(count)
        logged = range(-(-first // self.every) * self.every, self.step + 1, self.every)
        if not logged:
            return []
        values = self.flush()  # values[-1] is the loss of step self.step
        pairs = [(s, float(values[len(values) - 1 - (self.step - s)])) for s in logged]
        for s, loss in pairs if self.show else ():
            line = f"step {s}: train loss {loss:.4f}"
            self._bar.write(line) if self._bar is not None else print(line, flush=True)
        return pairs

    def flush(self) -> np.ndarray:
        """Reads the pending losses, raises DivergedError on a non-finite one, returns them."""
        arrays = parallel.host_value([losses for losses, _ in self.pending])
        counts = [count for _, count in self.pending]
        real = [np.asarray(a, np.float64).reshape(-1)[:n] for a, n in zip(arrays, counts, strict=True)]
        values = np.concatenate([np.zeros(0), *real])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            step = self.step - len(values) + 1 + int(bad[0])
            raise DivergedError(
                f"the training loss became {values[bad[0]]} at step {step} (epoch {self.epoch}): "
                f"training diverged; {self.diverged_hint}. Last good checkpoint: "
                + (f"epoch {self.epoch - 1}" if self.epoch > 1 else "none yet")
            )
        self.pending = []
        self.losses.extend(values.tolist())
        return values

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


class StopSignals:
    """SIGINT/SIGTERM as a flag checked between calls (never cutting a checkpoint); a second stops at once."""

    def __init__(self, saved: Callable[[], int | None] = lambda: 0):
        self.received: int | None = None
        self.saved = saved
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def check(self, step: int, epoch: int) -> None:
        """TrainingInterrupted if a signal came: the run stops before step + 1."""
        if self.received is not None:
            raise self._stopped(f"received: stopped before step {step + 1} (epoch {epoch})", epoch - 1)

    def _stopped(self, what: str, saved: int) -> TrainingInterrupted:
        signum = self.received or signal.SIGINT
        where = f"from the checkpoint of epoch {saved}" if saved else "from the start"
        return TrainingInterrupted(
            f"{signal.Signals(signum).name} {what}; rerun the same command to resume {where}",
            exit_code=128 + signum,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if isinstance(error, KeyboardInterrupt):  # a second signal: stopped wherever it was
            saved = self.saved() or 0
            what = f"received twice: stopped at once in epoch {saved + 1} (its checkpoint was not written)"
            raise self._stopped(what, saved) from None
