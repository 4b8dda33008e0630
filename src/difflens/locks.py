"""One writer per output: a lock file beside the output, created atomically, removed when the writer is done.

The lock of ``<parent>/<name>`` (a folder such as a dictionary or an index, or a file such as truth.json) is
``<parent>/.<name>.lock``: beside the output rather than inside it, so a writer that wipes its output folder
keeps its lock. It is created with ``O_CREAT | O_EXCL`` (exactly one process can create it) and holds JSON::

    {"host": ..., "pid": ..., "command": ..., "started": <unix time>, "started_text": <local time>}

A second writer is refused with that record. A lock left by a process that died on this host (kill -9, power
loss) is taken over, saying so on stderr; a lock from another host is never judged stale (its pid means nothing
here), the refusal says which file to delete. The lock is removed when the ``with`` block ends, by an exception
too. Within one process the lock is re-entrant (a stage that calls another on the same output does not deadlock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .atomic import naming_full_disk

_HELD: dict[Path, int] = {}  # locks this process holds -> nesting depth
_READ_RETRIES = 20  # a lock file is created empty and filled right after: wait this many x 50 ms for its record


class LockedError(ValueError):
    """Another live process is writing the same output (a ValueError: the CLI reports it as a user error)."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``: ``<parent>/.<name>.lock``."""
    output = Path(output).absolute()
    return output.with_name(f".{output.name}.lock")


def _command() -> str:
    return " ".join(sys.argv) or sys.executable


def _record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": _command(), "started": now,
            "started_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict | None:
    """The lock's record; None when the file vanished; {} when it stays unreadable (a writer died mid-write)."""
    for _ in range(_READ_RETRIES):
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict) and "pid" in record:
                return record
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def describe(record: dict) -> str:
    if not record:
        return "an unreadable lock record"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started_text', '?')}: "
            f"{record.get('command', '?')}")


def _stale(record: dict) -> bool:
    """A lock whose writer is gone: a dead pid on this host, or a record never written (empty for over 1 s)."""
    if not record:
        return True
    return record.get("host") == socket.gethostname() and not pid_alive(int(record["pid"]))


def _create(path: Path) -> bool:
    """Create the lock file with this process's record; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with naming_full_disk(path, "output lock", partial=path), os.fdopen(fd, "w") as f:  # no empty lock left behind
        f.write(json.dumps(_record(), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, record: dict) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile: it is moved aside first and checked."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else removed it; try to create ours
    if _read(aside) == record:
        aside.unlink(missing_ok=True)
        print(f"difflens: taking over the lock {path} left by a process that is gone ({describe(record)})",
              file=sys.stderr)
        return
    try:  # we moved a fresh lock of a live writer: put it back (link fails if yet another one exists)
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)


def acquire(output: str | os.PathLike) -> Path:
    """Take the lock of ``output`` (see the module docstring); raises :class:`LockedError` naming its holder."""
    path = lock_path(output)
    if path in _HELD:
        _HELD[path] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        if _create(path):
            _HELD[path] = 1
            return path
        record = _read(path)
        if record is None:
            continue  # released meanwhile
        if not _stale(record):
            where = "" if record.get("host") == socket.gethostname() else (
                f"; it runs on another host, so if it is gone, delete {path}")
            raise LockedError(f"{Path(output)} is being written by another process ({describe(record)}){where}; "
                              f"wait for it to finish, or choose another output")
        _take_over(path, record)
    raise LockedError(f"could not take the lock {path}: other processes keep taking it")


def release(path: Path) -> None:
    """Give back a lock taken by :func:`acquire` (removed when the outermost holder releases it)."""
    _HELD[path] -= 1
    if _HELD[path] == 0:
        del _HELD[path]
        record = _read(path)
        if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)


@contextmanager
def output_lock(output: str | os.PathLike | None):
    """``with output_lock(folder_or_file):`` hold the output's lock for the block (None: no output, no lock)."""
    if output is None:
        yield None
        return
    path = acquire(output)
    try:
        yield path
    finally:
        release(path)


def locks_output(where):
    """Decorator: hold the lock of the output ``where(*args, **kwargs)`` names (None: none) for each call of the
    decorated stage function, so a stage locks its output without its body changing."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with output_lock(where(*args, **kwargs)):
                return fn(*args, **kwargs)
        return locked
    return wrap
