"""Progress bars: throttled to a handful of redraws on files and pipes, normal on a terminal."""

import io
import os

import pytest
import tqdm.std

from difflens.progress import FILE_INTERVAL_S, progress


class FakeClock:
    """Advances `step` seconds per reading, so 2000 "fast" updates span simulated minutes."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, monkeypatch, n=2000, clock_step=0.05):
    monkeypatch.setattr(tqdm.std, "time", FakeClock(clock_step))  # tqdm reads this clock at construction
    with progress(n, "demo", unit="step", file=stream) as bar:
        for i in range(n):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")  # must not force a redraw per step


def test_file_stream_gets_a_handful_of_redraws_and_a_final_line(monkeypatch):
    stream = io.StringIO()
    _run(stream, monkeypatch)  # ~100 simulated seconds
    out = stream.getvalue()
    redraws = out.count("\r")
    assert 2 <= redraws <= 2 + 100 / FILE_INTERVAL_S + 2, out
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "2000/2000" in out.rsplit("\r", 1)[-1]  # the last redraw is the finished bar


def test_terminal_stream_is_not_throttled(monkeypatch):
    stream = TtyStringIO()
    _run(stream, monkeypatch)
    assert stream.getvalue().count("\r") > 100  # tqdm's own 0.1 s interval over ~100 s


def test_pipe_is_throttled(monkeypatch):
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "w") as writer:
        _run(writer, monkeypatch, n=500)
        writer.flush()
        writer.close()
        out = reader.read().decode()
    assert out.count("\r") <= 6 and out.endswith("\n") and "500/500" in out


def test_disabled_bar_writes_nothing(monkeypatch):
    stream = io.StringIO()
    with progress(10, "off", enabled=False, file=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


@pytest.mark.parametrize("initial", [0, 7])
def test_initial_counts_toward_total(initial):
    stream = io.StringIO()
    bar = progress(10, "resume", initial=initial, file=stream)
    bar.update(10 - initial)
    bar.close()
    assert "10/10" in stream.getvalue()
