"""The `difflens` command: one entry point, subcommands registered by each area of the library.

Each area owns a `cli.py` with `register(subparsers)`; handlers are thin wrappers over its Python API.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from difflens.configs import run_parser

# Areas that contribute subcommands, in the order `difflens --help` lists them.
_AREAS = [
    "difflens.embedded.cli",  # world train, generate
    "difflens.capture.cli",  # sites, capture (alias cache), capture info|split
    "difflens.dictionaries.cli",  # train, export
    "difflens.evaluation.cli",  # eval, analyze
    "difflens.interpret.cli",  # features index (alias build)|show|truth, autointerp
    "difflens.browser.cli",  # browse
    "difflens.steering.cli",  # steer
    "difflens.steering.editing.cli",  # bench edits
    "difflens.studies.cli",  # study truth|scan|extra-concepts
    "difflens.demo",  # demo
]


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


if __name__ == "__main__":
    sys.exit(main())
