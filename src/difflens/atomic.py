"""Crash-safe file writes: write a temporary file, fsync it, then `os.replace` it into place.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a half-written file, whatever moment the writer is killed at. Leftover temporaries
carry the `.tmp-` marker and are removed by `remove_temporaries`.

Every writer here takes the target path first, then what to write, and creates the target's
folder when it is missing; this module is the package's only atomic writer.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TMP_MARKER = ".tmp-"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, sync_dir: bool = True, fsync: bool = True):
    """Open a temporary beside `path` for writing; on success flush it (fsync unless `fsync=False`,
    which leaves durability to the caller's one `os.sync()` before its commit point) and rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync_dir: bool = True, fsync: bool = True) -> None:
    with atomic_file(path, sync_dir, fsync) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj, sync_dir: bool = True, fsync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), sync_dir, fsync)


def atomic_save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None,
                        sync_dir: bool = True, fsync: bool = True) -> None:
    """Save torch `tensors` as a safetensors file (detached, on the CPU, contiguous) atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, sorted_metadata(data), sync_dir, fsync)


def sorted_metadata(data: bytes) -> bytes:
    """safetensors bytes whose header lists ``__metadata__`` in key order: the writer keeps it in a hash map of random
    order per process, so the same tensors would give other bytes on every run (a resumed run would not match)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # never the case (same keys, same values); keep the writer's bytes rather than break the file
        return data
    return data[:8] + text.ljust(n) + data[8 + n:]


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, sync_dir: bool = True, fsync: bool = True) -> None:
    """Save `array` as a .npy file (never pickled) atomically."""
    with atomic_file(path, sync_dir, fsync) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def remove_temporaries(root: str | os.PathLike) -> int:
    """Delete temporaries left by killed writers under `root`; returns how many were removed."""
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if TMP_MARKER in name:
                os.remove(os.path.join(dirpath, name))
                removed += 1
    return removed
