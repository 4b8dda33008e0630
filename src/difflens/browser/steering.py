"""Live steering for the browser: request checks against limits, and one generation at a time.

A request is checked in full before it is queued (limits on steps, strength, resolution, prompt length and queue
length; the dictionary, latent, mode, box and step window), and refused with the reason. Accepted requests wait
in one FIFO queue served by one worker thread, so a second request while one runs waits (its position is shown)
rather than failing; a request beyond ``max_queue`` is refused at once (:class:`QueueFull`, HTTP 429). A queued
request belongs to a page that polls it: one cancelled by its page (DELETE) or left unpolled for
``abandon_seconds`` (the tab was closed) is dropped without being generated. The generation itself goes through
:func:`difflens.steering.steer` on the run's model.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import math
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("add", "ablate", "clamp")


@dataclass
class SteeringLimits:
    """What the browser's live steering accepts (the `browse` command's flags come from these fields)."""

    model: str | None = None
    """model adapter to steer (default: the model the run's store was captured with, e.g. embedded)"""
    max_steps: int = 32
    """most denoising steps a steering request may ask for"""
    max_strength: float = 50.0
    """largest |strength| a steering request may ask for"""
    max_resolution: int = 512
    """largest image side (pixels) a steering request may generate"""
    max_queue: int = 8
    """steering requests that may wait at once (more are refused)"""
    max_prompt_chars: int = 300
    """longest prompt a steering request may send"""
    abandon_seconds: float = 30.0
    """a queued steering request whose page has not asked about it for this long is dropped unrun (the page asks
    every 0.25 s and cancels its request when closed; this catches pages that vanish without a word)"""


class Refused(ValueError):
    """A steering request outside the limits or malformed: the reason is shown to the user."""


class QueueFull(Refused):
    """The queue holds ``max_queue`` waiting requests: refused at once (HTTP 429), to be tried again shortly."""


def steering_status() -> tuple[bool, str]:
    """(available, reason): whether the difflens.steering package is installed."""
    if importlib.util.find_spec("difflens.steering") is None:
        return False, "live steering is unavailable: the difflens.steering package is not installed"
    return True, ""


def _number(body: dict, key: str, default=None, kind=float):
    value = body.get(key, default)
    if value is None or value == "":
        if default is None:
            raise Refused(f"{key} is required")
        value = default
    if isinstance(value, bool):
        raise Refused(f"{key} must be a number, got {value!r}")
    try:
        v = kind(value) if kind is float else (int(value) if float(value) == int(float(value)) else None)
    except (TypeError, ValueError, OverflowError):
        raise Refused(f"{key} must be a number, got {str(value)[:40]!r}") from None
    if v is None or not math.isfinite(float(v)):
        raise Refused(f"{key} must be a finite {'integer' if kind is int else 'number'}, got {str(value)[:40]!r}")
    return v


def check_request(body: Any, run, limits: SteeringLimits, default_steps: int = 8,
                  default_resolution: int | None = None) -> dict:
    """A steering request (JSON object) checked against the run and the limits -> normalised settings.

    Raises :class:`Refused` naming the first problem.
    """
    from .run import NotFound

    if not isinstance(body, dict):
        raise Refused("the request must be a JSON object")
    unknown = sorted(set(body) - {"dictionary", "latent", "prompt", "seed", "strength", "mode", "box", "step_start",
                                  "step_end", "num_steps", "resolution"})
    if unknown:
        raise Refused(f"unknown field(s): {', '.join(unknown)}")
    name = body.get("dictionary")
    if not isinstance(name, str):
        raise Refused("dictionary is required")
    try:
        d = run.dictionary(name)
    except NotFound as err:
        raise Refused(str(err)) from None
    index = d.index
    if index is None:
        raise Refused(f"dictionary {name} has no feature index, which steering needs for its strength units")
    latent = _number(body, "latent", kind=int)
    if not 0 <= latent < index.num_latents:
        raise Refused(f"latent {latent} is outside the dictionary (0..{index.num_latents - 1})")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Refused("prompt is required")
    if len(prompt) > limits.max_prompt_chars:
        raise Refused(f"prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    seed = _number(body, "seed", 0, int)
    if not 0 <= seed < 2**31:
        raise Refused(f"seed must be in [0, 2^31), got {seed}")
    mode = body.get("mode", "add")
    if mode not in MODES:
        raise Refused(f"mode must be one of {', '.join(MODES)}, got {str(mode)[:40]!r}")
    strength = _number(body, "strength", 3.0)
    if abs(strength) > limits.max_strength:
        raise Refused(f"strength {strength:g} is beyond the limit of ±{limits.max_strength:g}")
    num_steps = _number(body, "num_steps", default_steps, int)
    if not 1 <= num_steps <= limits.max_steps:
        raise Refused(f"{num_steps} steps is beyond the limit: 1..{limits.max_steps} steps")
    resolution = body.get("resolution")
    if resolution not in (None, ""):
        resolution = _number(body, "resolution", kind=int)
        if not 8 <= resolution <= limits.max_resolution:
            raise Refused(f"resolution {resolution} px is beyond the limit: 8..{limits.max_resolution} px")
    else:
        resolution = None
        if default_resolution is not None and default_resolution > limits.max_resolution:
            raise Refused(f"the model generates {default_resolution} px images, beyond the limit of "
                          f"{limits.max_resolution} px (raise it with --max-resolution)")
    start = _number(body, "step_start", 0, int)
    end = _number(body, "step_end", num_steps, int)
    if not 0 <= start < end <= num_steps:
        raise Refused(f"step window [{start}, {end}) must lie within 0..{num_steps} and hold at least one step")
    box = body.get("box")
    if box is not None:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise Refused("box must be [x0, y0, x1, y1] in image fractions, or null for the whole image")
        try:
            box = tuple(float(v) for v in box)
        except (TypeError, ValueError, OverflowError):
            raise Refused("box must hold four numbers") from None
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
            raise Refused("box corners must lie in [0, 1] (fractions of the image)")
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            raise Refused("box is empty: need x1 > x0 and y1 > y0")
    return {"dictionary": name, "latent": latent, "prompt": prompt, "seed": seed, "mode": mode,
            "strength": strength, "num_steps": num_steps, "resolution": resolution, "steps": (start, end),
            "box": box}


def _png_data_url(image_HWC: np.ndarray) -> str:
    from .pages import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(image_HWC)).decode()


@dataclass
class SteeringJob:
    """One live-steering request in the browser's queue (not a training job: dictionaries.train.job.Job)."""

    id: str
    settings: dict
    status: str = "queued"  # queued | running | done | error | cancelled
    message: str = ""
    result: dict | None = None
    seconds: float | None = None
    created: float = 0.0
    last_seen: float = 0.0  # time.monotonic() of the last time its page asked about it
    started: int | None = None  # the worker's start order (1, 2, ...): first come, first served
    waited: float | None = None  # seconds from its request to its start


class SteeringService:
    """One worker thread, one FIFO queue: generations run one at a time, in order; cancelled and abandoned
    requests are dropped unrun."""

    def __init__(self, run, limits: SteeringLimits | None = None, generate=None):
        self.run = run
        self.limits = limits or SteeringLimits()
        self._generate = generate or self._steer
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[str] = []
        self._jobs: OrderedDict[str, SteeringJob] = OrderedDict()
        self._ids = itertools.count(1)
        self._starts = itertools.count(1)
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        self._model = None
        self._model_lock = threading.Lock()
        self.available, self.reason = steering_status()

    # ---- the model ---------------------------------------------------------------------------------------------
    def model_name(self) -> str:
        if self.limits.model:
            return self.limits.model
        store = self.run.store
        return str((store.meta.get("model") if store is not None else None) or "embedded")

    def model(self):
        with self._model_lock:
            if self._model is None:
                from difflens.adapters import load_adapter

                self._model = load_adapter(self.model_name())
        return self._model

    def defaults(self) -> dict:
        """Default steps and resolution of the run's model as the page offers them (without loading it)."""
        store = self.run.store
        meta = store.meta if store is not None else {}
        steps = int(meta.get("num_steps") or 8)
        return {"num_steps": min(steps, self.limits.max_steps), "resolution": meta.get("resolution")}

    # ---- queue -------------------------------------------------------------------------------------------------
    def submit(self, body: Any) -> SteeringJob:
        """Check and enqueue a request; Refused with the reason when it is outside the limits."""
        if not self.available:
            raise Refused(self.reason)
        self.check_room()  # a full queue refuses before the request is looked at: at once
        defaults = self.defaults()
        settings = check_request(body, self.run, self.limits, defaults["num_steps"], defaults["resolution"])
        with self._lock:
            self._check_room()
            job = SteeringJob(id=str(next(self._ids)), settings=settings, created=time.time(),
                              last_seen=time.monotonic())
            self._jobs[job.id] = job
            while len(self._jobs) > 64:  # forget old finished jobs
                old = next(iter(self._jobs))
                if self._jobs[old].status in ("queued", "running"):
                    break
                self._jobs.pop(old)
            self._queue.append(job.id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="difflens-steering", daemon=True)
                self._thread.start()
            self._wake.notify()
        return job

    def check_room(self) -> None:
        """QueueFull, with the reason, when ``max_queue`` requests are waiting (cheap: no request is read)."""
        with self._lock:
            self._check_room()

    def _check_room(self) -> None:
        self._drop_abandoned()  # closed tabs hold no places
        waiting = len(self._queue)
        if waiting >= self.limits.max_queue:
            raise QueueFull(f"the steering queue is full ({waiting} requests waiting, the limit is "
                            f"{self.limits.max_queue}); try again shortly")

    def status(self, job_id: str) -> dict | None:
        """The job as its page sees it (None: unknown); asking keeps a queued job alive (see abandon_seconds)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self._drop_abandoned()  # a job past its time is gone, whether or not the worker has come to it yet
            job.last_seen = time.monotonic()
            return self._describe(job)

    def cancel(self, job_id: str) -> dict | None:
        """Drop a queued job unrun (its page was closed or its user gave up); a running or finished one is left
        as it is. The job's status, or None when it is unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                self._queue.remove(job.id)
                job.status, job.message = "cancelled", "cancelled by its page before it ran"
            return self._describe(job)

    def _abandoned(self, job: SteeringJob) -> bool:
        return time.monotonic() - job.last_seen > self.limits.abandon_seconds

    def _drop_abandoned(self) -> None:
        """Cancel queued jobs whose page stopped asking about them (caller holds the lock)."""
        for job_id in [j for j in self._queue if self._abandoned(self._jobs[j])]:
            self._queue.remove(job_id)
            job = self._jobs[job_id]
            job.status = "cancelled"
            job.message = (f"dropped unrun: its page stopped asking about it for over "
                           f"{self.limits.abandon_seconds:g} s (closed?)")

    def _describe(self, job: SteeringJob) -> dict:
        out = {"id": job.id, "status": job.status, "message": job.message, "seconds": job.seconds,
               "started": job.started, "waited_s": job.waited}
        if job.status == "queued":
            out["position"] = self._queue.index(job.id) + 1
            out["running"] = self._running is not None
        if job.status == "done":
            out["result"] = job.result
        return out

    def _work(self) -> None:
        while True:
            with self._lock:
                self._drop_abandoned()
                while not self._queue:
                    if not self._wake.wait(timeout=300):
                        self._thread = None
                        return
                    self._drop_abandoned()
                job = self._jobs[self._queue.pop(0)]
                job.status, job.started, self._running = "running", next(self._starts), job.id
                job.waited = round(time.time() - job.created, 3)
            started = time.perf_counter()
            status, message, result = "done", "", None
            try:
                result = self._generate(job.settings)
            except ValueError as err:  # the steering API's own checks: a reason for the user
                status, message = "error", f"refused: {err}"
            except Exception as err:  # noqa: BLE001 - reported to the page without a stack trace
                traceback.print_exc()
                status, message = "error", f"generation failed ({type(err).__name__}: {err})"
            with self._lock:
                job.result, job.status, job.message = result, status, message
                job.seconds = round(time.perf_counter() - started, 3)
                self._running = None

    def _steer(self, settings: dict) -> dict:
        from difflens.steering import Edit, steer

        d = self.run.dictionary(settings["dictionary"])
        dictionary = d.model()
        edit = Edit(latent=settings["latent"], mode=settings["mode"], strength=settings["strength"],
                    region=settings["box"], steps=settings["steps"])
        result = steer(self.model(), dictionary, [edit], [settings["prompt"]], [settings["seed"]],
                       num_steps=settings["num_steps"], resolution=settings["resolution"], index=d.index)
        return {"baseline": _png_data_url(result.baseline[0]), "steered": _png_data_url(result.images[0][0]),
                "record": _jsonable(result.records[0][0]) if result.records and result.records[0] else {},
                "num_steps": result.num_steps}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)
