"""The scripts' plumbing: one flag per Config field (unset: the preset's value), one-line error exits."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lenet_jax.config import DEFAULT_PRESET, PRESETS, Config, field_types, get_preset
from lenet_jax.errors import (
    ConfigError,
    LenetError,
    TrainingInterrupted,
    device_memory_asked,
    out_of_memory_names,
    storage_error,
    storage_fault,
)
from lenet_jax.speed import CACHE_DIR_ENV, enable_compilation_cache, limit_malloc_arenas  # noqa: F401 - 0.2's


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _number(kind: type) -> Callable[[str], object]:
    """An argparse type whose error names the expected kind, for one-line messages."""

    def parse(text: str) -> object:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--preset plus one flag per Config field."""
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"named config to start from: {', '.join(PRESETS)} (default: {DEFAULT_PRESET})",
    )
    group = parser.add_argument_group("config fields (each overrides the preset's value)")
    types, defaults = field_types(), Config()
    for field in dataclasses.fields(Config):
        kind = types[field.name]
        help_text = f"{field.metadata['help']} (recipe: {getattr(defaults, field.name)})"
        old = field.metadata.get("old_name")
        names = [flag_name(field.name)] + ([flag_name(old)] if old else [])
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:  # choices are checked by config.validate: the same message from Python
            parse = _number(kind) if kind in (int, float) else kind
            group.add_argument(
                *names, dest=field.name, type=parse, default=None, metavar=field.name.upper(), help=help_text
            )


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset named by --preset, with every given flag applied (validated)."""
    config = get_preset(args.preset)
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Config)}
    return config.replace(**{name: value for name, value in given.items() if value is not None})


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and the same exit code as every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Runs main(argv): a LenetError becomes one line on stderr and its exit code (--debug: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return main(argv)
        except OSError as e:  # a full disk or a denied write that no caller explained better
            if (fault := storage_fault(e)) is None:
                raise
            raise storage_error(fault, "the command stopped there") from e
        except Exception as e:  # noqa: BLE001 - a device out of memory that no caller named
            if device_memory_asked(e) is None:
                raise
            with out_of_memory_names("--batch-size or --eval-batch-size"):
                raise
    except LenetError as e:
        if "--debug" in argv:
            raise
        message = str(e)
        if e.field:  # the Config field the message names: say its flag
            message = re.sub(rf"\b{e.field}\b", flag_name(e.field), message, count=1)
        # A stop the user asked for (Ctrl-C, SIGTERM) is a notice, not an error.
        print(f"{'stopped' if isinstance(e, TrainingInterrupted) else 'error'}: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outside training (which handles SIGINT itself)
        print("stopped: interrupted (nothing was being written)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `script | head`: the reader left, nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports it


def run_summary(workdir, rows: list[dict]) -> str:
    """A run's closing lines: final and best test accuracy, the checkpoints, the commands that use them."""
    final = rows[-1]
    best = max(rows, key=lambda row: row["test_accuracy"])
    return (
        f"Done: test accuracy {final['test_accuracy']:.4f} after epoch {final['epoch']} "
        f"(best {best['test_accuracy']:.4f}, epoch {best['epoch']}); checkpoints in {workdir}/checkpoints\n"
        f"  evaluate: {command('evaluate')} --workdir {workdir}\n"
        f"  predict:  {command('predict')} --workdir {workdir} IMAGE...\n"
        f"  serve:    {command('serve')} --workdir {workdir}"
    )


def command(name: str) -> str:
    """Script NAME as a hint: this python and scripts/NAME.py (relative to cwd), else lenet-NAME."""
    script = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    if not script.is_file():
        return f"lenet-{name}"
    here = Path.cwd()
    paths = [Path(sys.executable), script]
    shown = [str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in paths]
    return shlex.join(shown)


def quiet_library_logs() -> None:
    """Silences absl INFO/WARNING chatter and tfds progress bars on the console."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # a --data-dir-only machine (lenet_jax.data reads the files directly)
        return
    tfds.disable_progress_bar()
