"""Crash-safe file writes: write a temporary file, fsync it, then `os.replace` it into place.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a half-written file, whatever moment the writer is killed at. Leftover temporaries
carry the `.tmp-` marker and are removed by `remove_temporaries`.

Every writer here takes the target path first, then what to write, and creates the target's
folder when it is missing; this module is the package's only atomic writer.

A write that runs out of space (a full disk, a quota, `RLIMIT_FSIZE`) raises :class:`DiskFullError`, made in one
place (`naming_full_disk`, which `atomic_file` and the output locks use): "no space left on device while writing <what> to <path>". Its temporary is removed (the
space comes back), the file it would have replaced is untouched, and a rerun after freeing space completes.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TMP_MARKER = ".tmp-"
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # full disk, quota, file-size limit (RLIMIT_FSIZE)


class DiskFullError(OSError):
    """A write ran out of space; names what was being written and where. The previous file is intact."""

    def __init__(self, path: Path, what: str, cause: OSError):
        limit = " (file size limit)" if cause.errno == errno.EFBIG else ""
        super().__init__(cause.errno, f"no space left on device{limit} while writing {what} to {path}; "
                                      "free some space and rerun: finished work is kept", str(path))
        self.path, self.what = Path(path), what

    def __str__(self) -> str:
        return self.strerror


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
def naming_full_disk(path: str | os.PathLike, what: str, partial: Path | None = None):
    """Inside the block, running out of space raises :class:`DiskFullError` naming `what` and `path`, after removing
    `partial` (the half-written file) so the space comes back; any other error passes unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno not in _OUT_OF_SPACE or isinstance(err, DiskFullError):
            raise
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise DiskFullError(Path(path), what, err) from err


@contextmanager
def atomic_file(path: str | os.PathLike, sync_dir: bool = True, fsync: bool = True, what: str | None = None):
    """Open a temporary beside `path` for writing; on success flush it (fsync unless `fsync=False`,
    which leaves durability to the caller's one `os.sync()` before its commit point) and rename it.

    `what` names the content in a :class:`DiskFullError` (default: the file's name)."""
    path = Path(path)
    tmp = _tmp_path(path)
    with naming_full_disk(path, what or path.name, partial=tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync_dir: bool = True, fsync: bool = True,
                       what: str | None = None) -> None:
    with atomic_file(path, sync_dir, fsync, what) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj, sync_dir: bool = True, fsync: bool = True,
                      what: str | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), sync_dir, fsync, what)


def atomic_save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None,
                        sync_dir: bool = True, fsync: bool = True, what: str | None = None) -> None:
    """Save torch `tensors` as a safetensors file (detached, on the CPU, contiguous) atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, _sorted_metadata(data), sync_dir, fsync, what)


def _sorted_metadata(data: bytes) -> bytes:
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


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, sync_dir: bool = True, fsync: bool = True,
                    what: str | None = None) -> None:
    """Save `array` as a .npy file (never pickled) atomically."""
    with atomic_file(path, sync_dir, fsync, what) as f:
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
