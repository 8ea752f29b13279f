"""The `sase` command line: one subcommand per module of this package.

Bad input (a flag, a setting, a file, a folder) ends a command with one line on stderr that names it and
says what was expected, and exit code 2; `--debug` (or SASE_DEBUG=1) shows the traceback instead.

Under torchrun only rank 0 prints; an error is printed by the first process of each node (a node may
have a problem the others do not, such as too few GPUs).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import traceback
from types import ModuleType
from typing import Iterable, NoReturn, Sequence

from .commands import AFTER_INTERRUPT, HELP

DEBUG_HELP = "show the traceback of an error (also: SASE_DEBUG=1)"


class UsageError(Exception):
    """A flag argparse refused; its message is the whole line to print."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, without the usage block, and leaves exiting to `main`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def command_module(name: str) -> ModuleType:
    """The module of a subcommand (sase.cli.<name>): its `add_parser` and `run`."""
    return importlib.import_module(f"{__name__}.{name}")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `sase`, with the flags of `commands` (default: all). The others are listed by name and help
    alone, so that `sase --help`, or a command, does not import every command's module (and torch with them)."""
    full = set(HELP) if commands is None else set(commands)
    parser = Parser(prog="sase", description="Search and use SASE attention blocks for CNNs.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="store_true",
                        help="print the version of sase and of what it runs on (for bug reports), and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")  # subparsers are Parsers too
    for name, text in HELP.items():
        if name in full:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=text)
    for command in sub.choices.values():
        # SUPPRESS: unset here, the top-level --debug stands (a subparser default would overwrite it)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def versions() -> str:
    """sase's version, then those of Python, torch (and its CUDA build), torchvision and timm: one line."""
    import platform

    import timm
    import torch
    import torchvision

    from .. import __version__

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    return (f"sase {__version__} (Python {platform.python_version()}, torch {torch.__version__} ({cuda}), "
            f"torchvision {torchvision.__version__}, timm {timm.__version__})")


def debugging(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("SASE_DEBUG", "") not in ("", "0")


def describe(err: BaseException) -> str:
    """One line for a user error: an OSError as 'file: reason', anything else as its message."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # one line, whatever the message held


def named_command(argv: Sequence[str]) -> str | None:
    """The command an argv names: its first word that is not a flag (`sase`'s own flags take no value)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in HELP else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = named_command(argv)
    parser = build_parser([] if command is None else [command])
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the command they were given to, not by `sase`
            prog = f"sase {args.command}" if args.command else "sase"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    if args.version:
        print(versions())
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error ends it in one line on stderr and exit code 2, Ctrl-C in one line and
    exit code 130."""
    from ..search.graphs import GraphRecordingError
    from ..utils.distributed import leave, world

    # bad input from the user: settings and files (ValueError), files and folders the system refuses (OSError)
    user_errors = (ValueError, OSError, GraphRecordingError)
    place = world()
    try:
        with silenced(not place.main):
            return command_module(args.command).run(args) or 0
    except KeyboardInterrupt:
        # Ctrl-C: a line saying what is kept, not a traceback from wherever the work was
        if debugging(args):
            traceback.print_exc()
        if place.local_rank == 0:
            print(f"sase {args.command}: interrupted{AFTER_INTERRUPT.get(args.command, '')}", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        # whoever read the output went away (`sase ... | head`): stop quietly, as command-line tools do
        _stdout_to_devnull()
        return 1
    except user_errors as err:
        if place.local_rank != 0 and not debugging(args):
            return 2
        if debugging(args):
            err.__suppress_context__ = False  # show the error a one-line message replaced, too
            traceback.print_exc()
        print(f"sase {args.command}: error: {describe(err)}", file=sys.stderr)
        return 2
    finally:
        leave()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that flushing it again at exit does not fail on the closed pipe too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # no real file behind stdout
        pass


@contextlib.contextmanager
def silenced(quiet: bool):
    """Nothing printed inside, when `quiet`: a process other than rank 0 under torchrun."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


if __name__ == "__main__":
    sys.exit(main())
