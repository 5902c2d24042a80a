"""User-facing errors.

Anything a user can cause (bad flags, bad data, a missing checkpoint, a diverging run, Ctrl-C)
raises a subclass of `LenetError` whose message names the problem and the fix in one line. The
scripts print that line and exit with the error's `exit_code`; only `--debug` shows a traceback.
Everything else is a bug and keeps its traceback.
"""


class LenetError(Exception):
    """Base class of errors caused by input the user can fix."""

    exit_code = 2


class ConfigError(LenetError):
    """An invalid configuration value or flag."""


class DataError(LenetError):
    """Missing, malformed or unreachable training data."""


class CheckpointError(LenetError):
    """A missing, unreadable or incompatible checkpoint."""


class ConversionError(LenetError):
    """A PyTorch file that cannot (or must not) be converted, or a checkpoint that cannot be
    exported to PyTorch."""


class DivergedError(LenetError):
    """The training loss became NaN or infinite."""

    exit_code = 3


class TrainingInterrupted(LenetError):
    """SIGINT or SIGTERM stopped training; the run can be resumed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
