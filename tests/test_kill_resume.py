"""Kill -9 and resume, the fast cases (the full sweep over every long stage: bench/kill_resume.py): a stage
SIGKILLed while it writes, then rerun, gives the very files of an uninterrupted run, with nothing half-written or
left behind. References and reruns run in this process; only the killed attempts start a subprocess."""

from __future__ import annotations

import json

import killing as K
import pytest


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(work folder, reference folders by stage), shared: the capture store is made once (in this process)."""
    return tmp_path_factory.mktemp("kill"), {}


@pytest.mark.parametrize("name", K.FAST)
def test_killed_stage_resumes_to_the_same_files(pipeline, name):
    work, refs = pipeline
    row = K.kill_and_resume(K.stage(name), work, refs, kills=1, seed=0, in_process=True)
    assert row["matched"], row["problems"]
    assert row["killed"] == 1, "the kill should land while the stage writes"


def test_harness_sees_half_written_files_and_leftovers(tmp_path):
    """The checks themselves: a truncated JSON, a leftover temporary and lock, and a changed byte are all found."""
    stage = K.Stage("x", [], volatile={"log.txt": "timings"})
    ref, got = tmp_path / "ref", tmp_path / "got"
    for root in (ref, got):
        root.mkdir()
        (root / "a.json").write_text(json.dumps({"a": 1}))
        (root / "log.txt").write_text(str(root))
    assert K.compare(stage, ref, got) == []  # the volatile log may differ
    (got / "a.json").write_text('{"a": ')
    (got / "b.bin.tmp-123").write_bytes(b"")
    (got / ".out.lock").write_text("{}")
    problems = K.compare(stage, ref, got)
    assert any(p.startswith("a.json: JSON does not parse") for p in problems)
    assert "a.json: differs from the uninterrupted run" in problems
    assert {"b.bin.tmp-123: left behind", ".out.lock: left behind"} <= set(problems)
