"""Feature browser latency over HTTP on a synthetic 65,536-latent dictionary (target: median < 200 ms per page).

    nice -n 5 .venv/bin/python bench/browser.py [--latents 65536] [--requests 40] [--out /tmp/difflens_bench_browser]
                                                [--steer-run runs/demo]

What is measured
  * A run folder is built once in ``--out``: a small activation store (64 random 64 px images, a 16 x 16 image
    site of width 96), a random TopK SAE with ``--latents`` latents (k 32) saved as a dictionary, and beside it
    a feature index whose tensors are synthetic (random frequencies, maxima, histograms, top-32 examples and a
    64-example reservoir per latent, steps 0, 3, 7) written with ``FeatureIndex.save``, autointerp results with
    an explanation for every latent and a truth.json matching every latent to a concept. Nothing is encoded:
    the pages read these files, as they do for a real run.
  * ``difflens browse`` is started as a separate process on 127.0.0.1 (one uvicorn worker), and pages are
    fetched with httpx from this process, one request at a time:
      index page     ``/`` (dictionaries with metrics) and ``/d/sae`` (the feature table: first page, 50 rows)
                     with each sort key and a search over the explanations, cycled
      feature page   ``/d/sae/f/<latent>`` for random latents, each fetched once (so every request looks up its
                     own top images, quantile bins, histogram, per-step frequency, explanation, truth and its 8
                     nearest latents by decoder cosine among all 65,536)
    The first request of each kind is a warm-up (it loads the index, the table and the decoder directions) and
    is reported separately. Reported: median and p95 wall time per request, in ms. Images and overlays load
    lazily after a page and are not part of its latency.
  * ``--steer-run RUN`` (optional, e.g. runs/demo made by `make demo`): one live steering request through the
    browser's queue on that run's model (the embedded model, 8 steps, both images), timed end to end
    (POST, poll until done) after one warm-up request; median of 3.

The last printed line is JSON with every figure.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SITE, STEPS, WIDTH, GRID, N_IMAGES = "double.1.img.out", [0, 3, 7], 96, (16, 16), 64


def build(out: Path, latents: int) -> Path:
    from difflens.dictionaries import SAEConfig, TopKSAE, save_dictionary
    from difflens.interpret.index import (FeatureIndex, IndexConfig, dictionary_identity, empty_tensors,
                                          store_identity, FORMAT, FORMAT_VERSION)
    from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter

    run = out / "run"
    marker = run / f"built_{latents}"
    if marker.exists():
        return run
    rng = np.random.default_rng(0)
    T = GRID[0] * GRID[1]
    store_dir = run / "store"
    writer = StoreWriter(store_dir, dtype="float16")
    writer.prepare({"model": "embedded"}, [{"image_id": i, "prompt": f"synthetic image {i}", "seed": i}
                                           for i in range(N_IMAGES)])
    images = rng.integers(0, 255, size=(N_IMAGES, 64, 64, 3), dtype=np.uint8)
    ids = list(range(N_IMAGES))
    rows = {(SITE, s): ChunkRows(torch.randn(N_IMAGES * T, WIDTH), np.repeat(ids, T), np.tile(np.arange(T), N_IMAGES))
            for s in STEPS}
    writer.write_chunk(0, ids, images, rows)
    writer.finalize([EntrySpec(SITE, s, WIDTH, "image", T, GRID) for s in STEPS], 1,
                    {"model": "embedded", "n_images": N_IMAGES, "prompts_hash": "synthetic", "num_steps": 8,
                     "resolution": 64}, holdout=0.25)
    store = ActivationStore.open(store_dir)

    sae = TopKSAE(WIDTH, SAEConfig(num_latents=latents, k=32, normalization="none"), seed=0)
    sae.meta = {"site": SITE, "step": 3, "store": store.identity(), "split": "train"}
    folder = run / "dictionaries" / "sae"
    save_dictionary(sae, folder)

    cfg = IndexConfig(top_n=32, samples=64)
    t = empty_tensors(latents, STEPS, N_IMAGES, cfg)
    S, F = len(STEPS), latents
    g = torch.Generator().manual_seed(0)
    t["tokens"][:] = N_IMAGES * T
    freq = torch.rand(S, F, generator=g) ** 3 * 0.05
    t["count"][:] = (freq * N_IMAGES * T).long()
    t["images"][:] = torch.minimum(t["count"], torch.tensor(N_IMAGES))
    t["max"][:] = torch.rand(S, F, generator=g) * 10
    t["sum"][:] = t["count"].double() * t["max"].double() / 3
    t["hist"][:] = torch.randint(0, 50, t["hist"].shape, generator=g)
    score, order = torch.sort(torch.rand(F, cfg.top_n, generator=g) * 10, dim=1, descending=True)
    t["top_score"][:] = score
    t["top_example"][:] = torch.randint(0, N_IMAGES * S, (F, cfg.top_n), generator=g)
    t["sample_key"][:] = torch.randint(0, 2**31, (F, cfg.samples), generator=g)
    t["sample_score"][:] = torch.rand(F, cfg.samples, generator=g) * 5
    t["sample_example"][:] = torch.randint(0, N_IMAGES * S, (F, cfg.samples), generator=g)
    for j in range(S):
        t["image_start"][j] = torch.arange(N_IMAGES) * T
        t["image_rows"][j] = T
    from dataclasses import asdict

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "site": SITE, "steps": STEPS, "split": "all",
              "dictionary": dictionary_identity(sae),
              "store": store_identity(store, SITE, STEPS, "all", {s: N_IMAGES * T for s in STEPS}),
              "config": asdict(cfg), "dictionary_path": str(folder.resolve()), "store_path": str(store_dir.resolve()),
              "stream": "image", "grid": list(GRID), "active": "value > 0",
              "images_indexed": {str(s): N_IMAGES for s in STEPS}, "position": {"step_index": S, "batch": 0},
              "complete": True}
    FeatureIndex(header, t).save(folder / "index")

    words = ["red", "green", "blue", "circle", "square", "background", "edge", "top", "left", "texture"]
    features = {str(i): {"latent": i, "status": "ok", "score": float(rng.random()), "auroc": float(rng.random()),
                         "balanced_accuracy": float(rng.random()),
                         "explanation": {"explanation": f"{words[i % 10]} {words[(i // 10) % 10]} {i}",
                                         "concept": f"color:{words[i % 3]}"}} for i in range(F)}
    (folder / "index" / "autointerp" / "oracle").mkdir(parents=True, exist_ok=True)
    (folder / "index" / "autointerp" / "oracle" / "results.json").write_text(json.dumps({"features": features}))
    truth = {"concepts": [f"color:{w}" for w in words[:3]],
             "latents": [{"latent": i, "concept": f"color:{words[i % 3]}", "f1": float(rng.random()),
                          "auroc": float(rng.random()), "precision": 0.5, "recall": 0.5, "image_auroc": 0.5, "iou": 0.1}
                         for i in range(F)]}
    (folder / "truth.json").write_text(json.dumps(truth))
    (run / "summary.json").write_text(json.dumps({"metrics": [{"dictionary": "sae", "fvu_residual": 0.2, "l0": 32}]}))
    marker.write_text("ok")
    return run


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(run: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "difflens.cli", "browse", str(run), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/browser.css", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the browser did not start")


def timed(client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.get(url)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return dt * 1000


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1), "n": len(ms)}


def bench_pages(run: Path, latents: int, n: int) -> dict:
    import httpx

    port = free_port()
    proc = start(run, port)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=120) as c:
            warm = {"index": timed(c, "/"), "table": timed(c, "/d/sae"), "feature": timed(c, "/d/sae/f/0")}
            index_urls = ["/", "/d/sae", "/d/sae?sort=max", "/d/sae?sort=score", "/d/sae?sort=auroc&order=asc",
                          "/d/sae?q=red+circle", "/d/sae?concept=color:red&min_auroc=0.5", "/d/sae?page=7"]
            index_ms = [timed(c, index_urls[i % len(index_urls)]) for i in range(n)]
            rng = np.random.default_rng(1)
            feature_ms = [timed(c, f"/d/sae/f/{int(i)}") for i in rng.choice(latents, size=n, replace=False)]
    finally:
        proc.terminate()
        proc.wait(10)
    return {"warmup_ms": {k: round(v, 1) for k, v in warm.items()}, "index_page": stats(index_ms),
            "feature_page": stats(feature_ms)}


def bench_steer(run: str, repeats: int = 3) -> dict:
    import httpx

    port = free_port()
    proc = start(Path(run), port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
            body = {"dictionary": None, "latent": 1, "prompt": "a red circle in the center on a white background",
                    "seed": 0, "strength": 4, "mode": "add", "num_steps": 8, "box": [0.25, 0.25, 0.75, 0.75]}
            body["dictionary"] = next(n for n in ("sae_pca", "sae_none", "itda")
                                      if (Path(run) / "dictionaries" / n / "index").exists())
            times = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                job = c.post("/api/steer", json={**body, "seed": i}).json()
                if "id" not in job:
                    raise RuntimeError(job)
                while job["status"] in ("queued", "running"):
                    time.sleep(0.02)
                    job = c.get(f"/api/steer/{job['id']}").json()
                if job["status"] != "done":
                    raise RuntimeError(job)
                times.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"dictionary": body["dictionary"], "warmup_s": round(times[0], 2),
            "median_s": round(float(np.median(times[1:])), 3), "runs_s": [round(t, 3) for t in times[1:]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", type=int, default=65536)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--out", default="/tmp/difflens_bench_browser")
    p.add_argument("--steer-run", default=None)
    args = p.parse_args()
    t0 = time.perf_counter()
    run = build(Path(args.out), args.latents)
    built = time.perf_counter() - t0
    result = {"latents": args.latents, "build_s": round(built, 1), **bench_pages(run, args.latents, args.requests)}
    print(f"synthetic run with {args.latents:,} latents ({built:.0f} s to build): {run}")
    print(f"warm-up (first request of each kind): {result['warmup_ms']}")
    for key in ("index_page", "feature_page"):
        s = result[key]
        verdict = "ok" if s["median_ms"] < 200 else "over the 200 ms target"
        print(f"{key:<13} median {s['median_ms']:7.1f} ms   p95 {s['p95_ms']:7.1f} ms   ({s['n']} requests; {verdict})")
    if args.steer_run:
        result["steer"] = bench_steer(args.steer_run)
        s = result["steer"]
        print(f"live steering on {args.steer_run} ({s['dictionary']}, 8 steps, both images): median {s['median_s']} s "
              f"(runs {s['runs_s']}; warm-up incl. model load {s['warmup_s']} s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
