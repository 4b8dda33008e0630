"""The two rules every stage's output follows, in one place: one writer at a time (``locks``), and nothing
finished is replaced by a job with other settings unless asked.

A stage records the settings that made an output inside it (a dictionary's ``difflens_meta.job``, an index's
header, a checkpoint's info, a results file's config). Before writing it calls :func:`same_settings`
with what the output records and what it would write now:

- nothing recorded: write;
- the same settings: the output is this very job (reuse it, resume it, or rewrite it identically);
- other settings: refused with every difference named (``configs.differences``), unless ``overwrite``,
  which replaces it and says so on stderr.

Stage functions lock their output with ``locks.output_lock`` (or the ``locks.locks_output`` decorator) and run
this check under the lock, so no other writer changes the output between the check and the write.
"""

from __future__ import annotations

import json
import os
import sys

from .configs import differences
from .reading import CorruptFileError, read_json

OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace it, or choose another output"


def note(message: str) -> None:
    """Say on stderr what a stage did to an existing output (replaced it, reused it)."""
    print(f"difflens: {message}", file=sys.stderr, flush=True)


def same_settings(where: str | os.PathLike, recorded: dict | None, wanted: dict, *, what: str,
                  overwrite: bool = False, label: str = "saved", hint: str = OVERWRITE_HINT) -> bool:
    """Whether ``where`` holds ``what`` made with the ``wanted`` settings (see the module docstring).

    recorded: the settings the existing output records (None: there is none). Returns True for the same
    settings, False when there is nothing or (with ``overwrite``) it is to be replaced; raises ValueError
    naming each difference ("key: <label> old, now new") otherwise.
    """
    if recorded is None:
        return False
    diff = differences(_plain(recorded), _plain(wanted), label)
    if not diff:
        return True
    if overwrite:
        note(f"replacing {what} in {where} made with other settings ({'; '.join(diff)})")
        return False
    raise ValueError(f"{where} holds {what} of a different job ({'; '.join(diff)}); {hint}")


def previous_output(path: str | os.PathLike, what: str, overwrite: bool = False,
                    keys: tuple[str, ...] = ()) -> dict | None:
    """The JSON object a stage wrote at ``path`` before (None if there is none), to compare settings with. A
    corrupt one (truncated, garbled, empty, or without the ``keys`` that record its settings) is refused naming it,
    unless ``overwrite``, which replaces it and says so."""
    from pathlib import Path

    if not Path(path).exists():
        return None
    try:
        previous = read_json(path, what, hint=OVERWRITE_HINT, expect=dict)
        missing = [k for k in keys if k not in previous]
        if missing:
            raise CorruptFileError(path, what, f"no {', '.join(map(repr, missing))}", OVERWRITE_HINT)
        return previous
    except CorruptFileError as err:
        if not overwrite:
            raise
        note(f"replacing corrupt {what} {err.path} ({err.problem})")
        return None


def _plain(settings: dict) -> dict:
    """JSON's view of the settings (tuples become lists, paths strings), as they read back from a file."""
    return json.loads(json.dumps(settings, default=str))
