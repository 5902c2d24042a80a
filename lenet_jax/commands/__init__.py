"""The command-line programs: each module's `main(argv) -> exit code` and `console` (`lenet-NAME`)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from lenet_jax import cli


def parser(doc: str | None) -> cli.Parser:
    """A program's parser: its docstring as --help's text, and --debug (tracebacks: cli.run)."""
    made = cli.Parser(description=doc, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    made.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return made


def checkpoint_flags(parser: cli.argparse.ArgumentParser) -> None:
    """--workdir and --epoch: the checkpoint a program reads."""
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--epoch", type=int, help="which epoch's checkpoint (default: newest)")


def console(main: Callable[[list[str]], int]) -> Callable[[], None]:
    """An installed command: main run by `cli.run` (a LenetError as one line and its exit code)."""
    return lambda: sys.exit(cli.run(main))
