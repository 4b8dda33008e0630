"""The `difflens` command: one entry point, subcommands registered by each area of the library.

Each area owns a `cli.py` with `register(subparsers)`; handlers are thin wrappers over its Python API.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Areas that contribute subcommands, in the order `difflens --help` lists them.
_AREAS = [
    "difflens.embedded.cli",  # world train, generate
    "difflens.capture.cli",  # sites, capture (alias cache), capture info|split
    "difflens.dictionaries.cli",  # train, export
    "difflens.evaluation.cli",  # eval, analyze
    "difflens.interpret.cli",  # features index (alias build)|show|truth, autointerp
    "difflens.browser.cli",  # browse
    "difflens.steering.cli",  # steer
    "difflens.steering.bench.cli",  # bench edits
    "difflens.demo",  # demo
]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; user errors print one line and return 2."""
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"difflens {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
