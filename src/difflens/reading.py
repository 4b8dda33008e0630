"""Reading difflens' own JSON and safetensors files, or raising an error that names the file.

Every reader of a file difflens wrote goes through here, so a truncated, garbled or empty file gives one kind of
error, :class:`CorruptFileError` (a ValueError, so the command line prints it as one line): which file, what is
wrong with it and what to do — never a raw traceback from `json` or `safetensors`, never a silently wrong result.
A missing file is a FileNotFoundError naming it. Callers that own a *cache* catch CorruptFileError, say so with
`outputs.note` and rebuild the entry instead.

safetensors checks its header and that the data fills the file exactly (truncation fails); it keeps no checksum
of the data itself, so only files with their own checksums (the store's shards) catch bytes flipped in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESTORE_HINT = "restore it from a copy or rerun the stage that wrote it"


class CorruptFileError(ValueError):
    """A file exists but cannot be read as what it should be: `path`, `what` it holds, `problem`, `hint`."""

    def __init__(self, path: str | os.PathLike, what: str, problem: str, hint: str = RESTORE_HINT):
        super().__init__(f"corrupt {what} {path}: {problem}; {hint}")
        self.path, self.what, self.problem, self.hint = Path(path), what, problem, hint


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path}")


def read_json(path: str | os.PathLike, what: str, *, hint: str = RESTORE_HINT, expect: type | None = None) -> Any:
    """The JSON value in `path` (`expect`: dict or list, checked); CorruptFileError if empty, truncated or garbled."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path, what) from None
    if not raw.strip():
        raise CorruptFileError(path, what, "the file is empty", hint)
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptFileError(path, what, "not UTF-8 text (garbled bytes)", hint) from None
    except json.JSONDecodeError as err:
        raise CorruptFileError(path, what, f"not valid JSON, truncated or garbled ({err})", hint) from None
    if expect is not None and not isinstance(value, expect):
        raise CorruptFileError(path, what, f"holds a JSON {type(value).__name__}, not a {expect.__name__}", hint)
    return value


def read_safetensors(path: str | os.PathLike, what: str, *, hint: str = RESTORE_HINT, framework: str = "pt",
                     keys: Callable[[str], bool] | None = None, tensors: bool = True) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of the safetensors file `path`: every tensor, those whose name `keys` accepts, or none
    (`tensors=False`, the header only); CorruptFileError if the file is empty, truncated or its header garbled."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise _missing(path, what)
    if path.stat().st_size == 0:
        raise CorruptFileError(path, what, "the file is empty", hint)
    try:
        with safe_open(str(path), framework=framework) as f:
            metadata = dict(f.metadata() or {})
            names = [k for k in f.keys() if keys is None or keys(k)] if tensors else []
            out = {k: f.get_tensor(k) for k in names}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types (and OSError) for bad files
        raise CorruptFileError(path, what, f"not a readable safetensors file, truncated or garbled ({err})",
                               hint) from None
    return out, metadata


def read_metadata_json(path: str | os.PathLike, metadata: dict[str, str], key: str, what: str, *,
                       hint: str = RESTORE_HINT) -> Any:
    """The JSON value a safetensors file keeps under metadata `key`; CorruptFileError if absent or garbled."""
    if key not in metadata:
        raise CorruptFileError(path, what, f"its metadata has no {key!r}", hint)
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise CorruptFileError(path, what, f"its metadata {key!r} is not valid JSON ({err})", hint) from None
