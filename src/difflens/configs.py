"""Command-line flags built from config dataclasses, so the CLI and the Python API share one set of defaults.

A config is a plain dataclass; each field's help text is the string literal written right below it
(an attribute docstring)::

    @dataclass
    class SAETrainConfig:
        k: int = 64
        \"\"\"Active latents per token.\"\"\"

``add_config_arguments(parser, SAETrainConfig)`` adds ``--k`` (help: that docstring plus the default) and
``config_from_args(SAETrainConfig, args)`` builds the config from the flags the user gave; flags left out
keep the dataclass default, so a flag never overrides a default with a stand-in value (``--k 0`` is 0, and
is then refused by the config's own validation). Several configs may share a flag (``--k`` for SAE and
ITDA), each keeping its own default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from typing import Any, Literal


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: attribute docstring} of a dataclass and its bases (empty where the source is unavailable)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parser_for(tp, optional: bool, name: str):
    """The argparse `type` callable and `choices` for a field's annotation."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return None, choices
    if origin in (list, tuple):
        (elem, *_rest) = typing.get_args(tp) or (str,)
        elem = str if elem is Ellipsis else elem

        def parse_list(text: str):
            try:
                values = [elem(v.strip()) for v in text.split(",") if v.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(f"--{name} takes comma-separated {elem.__name__} values, got {text!r}")
            return tuple(values) if origin is tuple else values

        return parse_list, None
    if tp in (int, float, str):
        if not optional:
            return tp, None

        def parse_optional(text: str):
            return None if text.lower() in ("none", "") else tp(text)

        return parse_optional, None
    # a union such as `list[int] | str` ("all" or a list): parse numbers lists, keep words
    if origin in (typing.Union, types.UnionType):
        def parse_union(text: str):
            parts = [p.strip() for p in text.split(",") if p.strip()]
            try:
                return [int(p) for p in parts]
            except ValueError:
                return text

        return parse_union, None
    return str, None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *configs: type,
                         exclude: typing.Collection[str] = (), only: typing.Collection[str] | None = None) -> None:
    """Add one flag per field of ``configs`` (fields shared by several configs get one flag).

    Defaults are left to the dataclasses (flags not given do not appear in the namespace); the help text says
    each config's default. A field's ``metadata={"aliases": [...]}`` adds extra flag spellings.
    """
    seen: dict[str, list[tuple[type, dataclasses.Field]]] = {}
    for cls in configs:
        for f in dataclasses.fields(cls):
            if f.name in exclude or (only is not None and f.name not in only) or not f.init:
                continue
            seen.setdefault(f.name, []).append((cls, f))
    for name, owners in seen.items():
        cls, f = owners[0]
        hints = typing.get_type_hints(cls)
        tp, optional = _unwrap_optional(hints[name])
        doc = field_docs(cls).get(name, "")
        defaults = {c.__name__: _default(fl) for c, fl in owners}
        shown = {v if not isinstance(v, (list, tuple)) else ",".join(map(str, v)) for v in defaults.values()}
        if len(shown) == 1:
            default_text = f"default: {next(iter(shown))}"
        else:
            default_text = "default: " + "; ".join(f"{_short(c)} {v}" for c, v in defaults.items())
        help_text = f"{doc} ({default_text})" if doc else f"({default_text})"
        flags = [flag_name(name), *f.metadata.get("aliases", [])]
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if all(_default(fl) is dataclasses.MISSING for _c, fl in owners):
            kwargs["required"] = True
            kwargs["help"] = doc.replace("%", "%%")
        if tp is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        conv, choices = _parser_for(tp, optional, name.replace("_", "-"))
        if conv is not None:
            kwargs["type"] = conv
        if choices is not None:
            kwargs["choices"] = choices
        parser.add_argument(*flags, **kwargs)


def _short(cls_name: str) -> str:
    """'SAETrainConfig' -> 'SAE' for help texts that list per-config defaults."""
    for suffix in ("TrainConfig", "Config"):
        if cls_name.endswith(suffix) and cls_name != suffix:
            return cls_name[: -len(suffix)]
    return cls_name


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """``cls(**flags given, **overrides)``: fields not given keep the dataclass defaults."""
    return cls(**{**given(args, cls), **overrides})


def replace_known(config, **changes: Any):
    """``dataclasses.replace`` that names unknown fields in a ValueError (for keyword-style Python APIs)."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **changes)


def add_command(subparsers, name: str, help: str, func, *configs: type, **parser_kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of ``configs`` and whose handler is ``func(args)``."""
    parser = subparsers.add_parser(name, help=help, **parser_kwargs)
    if configs:
        add_config_arguments(parser, *configs)
    parser.set_defaults(func=func)
    return parser


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; user errors print one line and return 2. Here, below every area,
    so an area's `cli.py` can run its own commands alone without importing the `difflens` dispatcher."""
    import sys

    from .atomic import DiskFullError

    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, KeyError, DiskFullError) as err:  # corrupt files are ValueErrors
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"difflens {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(result or 0)


def differences(saved: dict, now: dict, label: str = "saved", prefix: str = "") -> list[str]:
    """'key: <label> old, now new' for every setting that differs between a recorded job and this one (nested
    dicts compared key by key), so a refused resume names exactly what changed."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, label, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {label} {a!r}, now {b!r}")
    return out
