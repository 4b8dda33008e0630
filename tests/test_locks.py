"""Output locks: one writer per output, a holder named on refusal, stale locks taken over, released on errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from difflens.locks import LockedError, lock_path, output_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_records_its_holder_and_is_removed_after_the_block(tmp_path):
    out = tmp_path / "dictionary"
    with output_lock(out) as path:
        assert path == lock_path(out) == tmp_path / ".dictionary.lock"
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] and record["started"] <= time.time()
        with output_lock(out):  # re-entrant in one process
            pass
        assert path.exists()
    assert not path.exists()


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    script = (f"from difflens.locks import output_lock\nimport sys, time\n"
              f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"being written by another process \\(pid {holder.pid} on"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_live_pid_in_the_lock_refuses_a_second_writer(tmp_path):
    out = tmp_path / "index"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "command": "other",
                                         "started": 0}))
    with pytest.raises(LockedError, match=f"pid {os.getppid()} .*other"):
        with output_lock(out):
            pass
    assert json.loads(lock_path(out).read_text())["command"] == "other"  # left alone


def test_a_stale_lock_of_a_dead_process_is_taken_over_saying_so(tmp_path, capsys):
    out = tmp_path / "truth.json"
    dead = _dead_pid()
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "command": "killed",
                                         "started": 0}))
    with output_lock(out) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"taking over the lock {lock_path(out)} left by a process that is gone (pid {dead}" in capsys.readouterr().err
    assert not lock_path(out).exists() and not list(tmp_path.glob("*stale*"))


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid(), "command": "x", "started": 0}))
    with pytest.raises(LockedError, match="another host, so if it is gone, delete"):
        with output_lock(out):
            pass


def test_an_exception_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with output_lock(out):
            raise RuntimeError("boom")
    assert not lock_path(out).exists()
    with output_lock(out):  # free again
        pass
