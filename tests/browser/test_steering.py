"""Live steering's queue under load: bounded (a request beyond max_queue is refused at once, naming the reason),
first come first served, and a request its page cancelled or stopped asking about is never generated. The run is
a stub (one dictionary of 16 latents) and the generation a fake that waits on a gate, so nothing is loaded."""

from __future__ import annotations

import threading
import time

import pytest

from difflens.browser.steering import QueueFull, SteeringLimits, SteeringService
from runs import SteeringStubRun


class Generations:
    """A fake generation: the first one waits for ``release()``; every one records its latent, in order."""

    def __init__(self):
        self.gate, self.ran, self.lock = threading.Event(), [], threading.Lock()

    def __call__(self, settings):
        with self.lock:
            self.ran.append(settings["latent"])
        self.gate.wait(10)
        return {"latent": settings["latent"]}

    def release(self):
        self.gate.set()


def body(latent: int) -> dict:
    return {"dictionary": "sae", "latent": latent, "prompt": "a red circle", "num_steps": 2}


def service(**limits) -> tuple[SteeringService, Generations]:
    gen = Generations()
    s = SteeringService(SteeringStubRun(), SteeringLimits(**limits), generate=gen)
    s.available = True
    return s, gen


def wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def busy(s: SteeringService, gen: Generations) -> str:
    """Submit a first job and wait until it runs (holding the worker until gen.release())."""
    job = s.submit(body(0))
    wait_for(lambda: s.status(job.id)["status"] == "running")
    return job.id


def test_a_request_beyond_max_queue_is_refused_at_once_naming_the_reason():
    s, gen = service(max_queue=2)
    busy(s, gen)
    s.submit(body(1))
    s.submit(body(2))
    t0 = time.perf_counter()
    with pytest.raises(QueueFull, match=r"queue is full \(2 requests waiting, the limit is 2\)"):
        s.submit(body(3))
    with pytest.raises(QueueFull):
        s.check_room()  # what the route asks on its event loop, before it reads the request
    assert time.perf_counter() - t0 < 0.5
    gen.release()
    wait_for(lambda: len(gen.ran) == 3)
    assert gen.ran == [0, 1, 2]  # the refused request was never queued


def test_jobs_run_first_come_first_served():
    s, gen = service(max_queue=8)
    first = busy(s, gen)
    ids = [s.submit(body(latent)).id for latent in (5, 3, 9, 1, 7)]
    assert [s.status(i)["position"] for i in ids] == [1, 2, 3, 4, 5]
    gen.release()
    wait_for(lambda: all(s.status(i)["status"] == "done" for i in ids))
    assert gen.ran == [0, 5, 3, 9, 1, 7]
    assert [s.status(i)["started"] for i in [first] + ids] == [1, 2, 3, 4, 5, 6]
    waited = [s.status(i)["waited_s"] for i in ids]
    assert waited == sorted(waited) and waited[0] >= 0  # each waited for the ones before it


def test_a_cancelled_request_is_dropped_unrun_and_frees_its_place():
    s, gen = service(max_queue=2)
    busy(s, gen)
    doomed, kept = s.submit(body(1)).id, s.submit(body(2)).id
    status = s.cancel(doomed)
    assert status["status"] == "cancelled" and "before it ran" in status["message"]
    assert s.status(kept)["position"] == 1
    s.submit(body(3))  # the cancelled job's place is free again
    assert s.cancel("12345") is None
    gen.release()
    wait_for(lambda: len(gen.ran) == 3)
    time.sleep(0.05)
    assert gen.ran == [0, 2, 3]
    assert s.status(doomed)["status"] == "cancelled" and s.status(doomed)["started"] is None


def test_a_running_or_finished_job_is_not_cancelled():
    s, gen = service()
    running = busy(s, gen)
    assert s.cancel(running)["status"] == "running"
    gen.release()
    wait_for(lambda: s.status(running)["status"] == "done")
    assert s.cancel(running)["status"] == "done"


def test_a_request_whose_page_stopped_asking_is_dropped_unrun():
    s, gen = service(max_queue=2, abandon_seconds=0.2)
    busy(s, gen)
    deserted, polled = s.submit(body(1)).id, s.submit(body(2)).id
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # the page of `polled` asks every 50 ms; nobody asks about `deserted`
        s.status(polled)
        time.sleep(0.05)
    s.submit(body(3))  # the deserted job's place is free: the queue holds `polled` only
    gen.release()
    wait_for(lambda: len(gen.ran) == 3)
    time.sleep(0.05)
    assert gen.ran == [0, 2, 3]
    status = s.status(deserted)
    assert status["status"] == "cancelled" and "stopped asking" in status["message"] and status["started"] is None
