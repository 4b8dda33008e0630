"""Capture overhead versus plain generation of the same images on the embedded model.

Plain:   adapter.generate(...) for every batch (no hooks, nothing written).
Capture: the full `difflens cache` path -- hooks, float16 cast, shard writes, one sync per chunk,
         ledger markers and PNG images -- for the same prompts, seeds and batches.
Uses the shipped trained embedded model when present, else a randomly initialised model of
the same (default) configuration, which costs the same to run. Target: overhead <= 10 %.

Wall times on a shared 2-core VM swing by +-10 % between runs (the host's load comes in phases), so
besides min and median it reports
  paired:   the median over repeats of (capture run / the plain run just before it), and
  own time: what the capture does outside generation (staging shards and images, waiting on chunk
            commits, set-up, finalize) plus its callbacks inside it, relative to the generation time
            within the same run -- stable from run to run, but blind to slow-downs the background
            commit thread may cause in generation (which the wall figures include).

    python bench/capture_overhead.py [--n-images 32] [--batch-size 8] [--steps 8] [--repeats 7]
Last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from contextlib import contextmanager

import torch

from difflens.adapters.embedded import EmbeddedAdapter
from difflens.capture import CaptureConfig, resolve_prompts, run_capture
from difflens.capture import runner


@contextmanager
def timing_capture(adapter, totals: dict):
    """Adds to totals["generate"] the time in adapter.generate and to totals["callback"] the time in the
    capture callback (which runs inside generate) while the block runs."""
    generate, callback = adapter.generate, runner._ChunkRecorder.__call__

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - t0
        return wrapper

    adapter.generate = timed(generate, "generate")
    runner._ChunkRecorder.__call__ = timed(callback, "callback")
    try:
        yield
    finally:
        del adapter.generate  # back to the class method
        runner._ChunkRecorder.__call__ = callback


def load_model():
    from difflens.embedded import ShapesModelConfig, ShapesPipeline, load_embedded

    try:
        return load_embedded(), "embedded (trained)"
    except FileNotFoundError:
        return ShapesPipeline.random(ShapesModelConfig(), seed=0), "embedded (random init, default config)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sites", default=None, help="comma-separated (default: the model's main site)")
    ap.add_argument("--steps-to-record", default="all", help="'all' or comma-separated steps")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    pipe, label = load_model()
    pipe.transformer.eval()
    adapter = EmbeddedAdapter(pipe)
    sites = args.sites.split(",") if args.sites else adapter.default_sites
    steps = list(range(args.steps)) if args.steps_to_record == "all" else [int(s) for s in args.steps_to_record.split(",")]
    prompts = resolve_prompts("world", args.n_images, seed=0)
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]

    def plain() -> None:
        for b in batches:
            adapter.generate([p["prompt"] for p in b], [p["seed"] for p in b], num_steps=args.steps)

    tmp = tempfile.mkdtemp(prefix="difflens-bench-")

    own_pct = []

    def capture() -> None:
        totals = {"generate": 0.0, "callback": 0.0}
        t0 = time.perf_counter()
        with timing_capture(adapter, totals):
            run_capture(CaptureConfig(out=tmp + "/store", sites=sites, steps_to_record=steps, n_images=args.n_images,
                                      num_steps=args.steps, batch_size=args.batch_size, progress=False),
                        adapter=adapter)
        wall = time.perf_counter() - t0
        generation = totals["generate"] - totals["callback"]  # what plain generation cost within this run
        own_pct.append(100 * (wall - generation) / generation)

    def clean() -> None:  # deleting the store is not part of capturing: done outside the timing
        shutil.rmtree(tmp + "/store", ignore_errors=True)

    t_plain, t_capture, cpu_plain, cpu_capture = [], [], [], []
    try:
        plain()  # warm-up
        capture()
        clean()
        own_pct.clear()
        for _ in range(args.repeats):  # interleave so background load hits both alike
            for fn, wall, cpu in ((plain, t_plain, cpu_plain), (capture, t_capture, cpu_capture)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                clean()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p, c = min(t_plain), min(t_capture)  # noise only ever adds time: the minimum is the cleanest estimate
    cp, cc = min(cpu_plain), min(cpu_capture)
    med_p, med_c = sorted(t_plain)[len(t_plain) // 2], sorted(t_capture)[len(t_capture) // 2]
    rows = args.n_images * len(steps) * sum(adapter.site(s).tokens for s in sites)
    print(f"model            {label}, {torch.get_num_threads()} torch threads")
    print(f"workload         {args.n_images} images, batch {args.batch_size}, {args.steps} steps; "
          f"recording {', '.join(sites)} at {len(steps)} steps ({rows} rows)")
    print(f"plain generation {p:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in t_plain)})")
    print(f"with capture     {c:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in t_capture)})")
    print(f"overhead         {100 * (c / p - 1):+.1f} % wall, {100 * (cc / cp - 1):+.1f} % process CPU"
          f" ({cp:.3f} vs {cc:.3f} s)  (target <= 10 %); medians {med_p:.3f} vs {med_c:.3f} s "
          f"({100 * (med_c / med_p - 1):+.1f} %)")
    own_median = sorted(own_pct)[len(own_pct) // 2]
    # each capture run against the plain run just before it: both see the same phase of a busy host
    paired = sorted(100 * (c_i / p_i - 1) for p_i, c_i in zip(t_plain, t_capture))
    paired_median = paired[len(paired) // 2]
    print(f"paired overhead  {paired_median:+.1f} % (median of each capture run vs the plain run before it; "
          f"pairs: {', '.join(f'{x:+.1f}' for x in paired)})")
    print(f"capture's own time {own_median:+.1f} % of the generation time in the same run (median; runs: "
          f"{', '.join(f'{x:.1f}' for x in own_pct)})")
    print(json.dumps({"own_time_pct": round(own_median, 2), "paired_overhead_pct": round(paired_median, 2), "plain_s": round(p, 4), "capture_s": round(c, 4), "overhead_pct": round(100 * (c / p - 1), 2),
                      "cpu_overhead_pct": round(100 * (cc / cp - 1), 2),
                      "median_overhead_pct": round(100 * (med_c / med_p - 1), 2),
                      "n_images": args.n_images, "steps": args.steps, "recorded_steps": len(steps), "rows": rows,
                      "model": label}))


if __name__ == "__main__":
    main()
