"""The `sase` command line: one subcommand per module of this package."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import compare, demo, pipeline, search
from . import eval as eval_
from . import train

COMMANDS = {"search": search, "train": train, "eval": eval_, "compare": compare, "pipeline": pipeline, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sase", description="Search and use SASE attention blocks for CNNs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # bad input from the user: one clear line, not a traceback
        print(f"sase {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
