"""User-facing errors.

Anything a user can cause (bad flags, bad data, a missing checkpoint) raises a subclass of
`LenetError` whose message names the problem and the fix in one line. The scripts print that line
and exit non-zero; only `--debug` shows a traceback. Everything else is a bug and keeps its
traceback.
"""


class LenetError(Exception):
    """Base class of errors caused by input the user can fix."""


class ConfigError(LenetError):
    """An invalid configuration value or flag."""


class DataError(LenetError):
    """Missing, malformed or unreachable training data."""


class CheckpointError(LenetError):
    """A missing, unreadable or incompatible checkpoint."""
