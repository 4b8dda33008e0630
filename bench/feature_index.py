"""Feature-index build throughput beside plain ``encode`` on the same rows: what the bookkeeping costs.

    python bench/feature_index.py [--latents 768,16384,65536] [--images 256] [--rounds 3] [--threads 1]

Cases: random TopK SAEs (normalisation none) of each ``--latents`` size on a synthetic store (width 96,
16×16 image tokens, float16 rows like a capture writes them), and, when ``runs/demo`` exists, the demo's
dictionaries (SAE, ITDA, k-sparse neurons) on their own site and step of the demo store.

Both sides open a reader, read the same rows from the store in image order and encode them in the same
chunks (``encode_chunk_tokens``): plain = ``reader.iter_batches(batch_images × T, shuffle=False)`` + encode;
index = ``build_feature_index`` in memory (trace scan, encode, every statistic, top-N and reservoir merges).
Rounds alternate the two so machine noise hits both alike; the median of each is kept.
``ratio`` = index tokens/s ÷ encode tokens/s (the target is ≥ 0.8). ``state_MB`` is the index's own memory
(its tensors plus the (F × images per batch) scratch buffer), which grows with latents, never with tokens.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from difflens.dictionaries import SAEConfig, TopKSAE, load_dictionary
from difflens.interpret.index import IndexConfig, build_feature_index, encode_rows
from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter

SITE = "double.1.img.out"
GRID = (16, 16)
DEMO = Path(__file__).resolve().parents[1] / "runs" / "demo"


def synthetic_store(root: Path, n_images: int, dim: int = 96, chunk_images: int = 8) -> Path:
    """A store of ``n_images`` images × 256 tokens with sparse-feature activations (chunks of 8 images)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4 * dim, dim, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    T = GRID[0] * GRID[1]
    w = StoreWriter(root, dtype="float16")
    w.prepare({"model": "synthetic"}, [{"image_id": i, "prompt": f"p{i}", "seed": i} for i in range(n_images)])
    n_chunks = (n_images + chunk_images - 1) // chunk_images
    for c in range(n_chunks):
        ids = list(range(c * chunk_images, min((c + 1) * chunk_images, n_images)))
        n = len(ids) * T
        codes = torch.zeros(n, 4 * dim)
        codes.scatter_(1, torch.randint(0, 4 * dim, (n, 4), generator=g), torch.rand(n, 4, generator=g) * 3)
        acts = codes @ feats + 0.1 * torch.randn(n, dim, generator=g)
        w.write_chunk(c, ids, None, {(SITE, 3): ChunkRows(acts, np.repeat(ids, T), np.tile(np.arange(T), len(ids)))})
    w.finalize([EntrySpec(SITE, 3, dim, "image", T, GRID)], n_chunks, {"model": "synthetic", "n_images": n_images,
                                                                        "prompts_hash": "bench"})
    return root


def plain_encode(dictionary, store, step: int, batch_rows: int) -> int:
    """Encode every row of (the dictionary's site, step) in order; a fresh reader, as the index build opens one
    (so both pay the shards' first-read checksums)."""
    n = 0
    for acts, _ in store.reader(dictionary.site, step).iter_batches(batch_rows, shuffle=False):
        encode_rows(dictionary, acts)
        n += acts.shape[0]
    return n


def state_bytes(index) -> int:
    return sum(t.numel() * t.element_size() for t in index.tensors.values()) + 4 * index.num_latents * index.config.batch_images


def case(name: str, dictionary, store, step: int, rounds: int, cfg: IndexConfig) -> dict:
    site = dictionary.site
    reader = store.reader(site, step)
    T = reader.num_rows // max(len(reader.image_ids()), 1)
    batch_rows = cfg.batch_images * T
    plain_encode(dictionary, store, step, batch_rows)  # warm: page cache, checksums, allocator
    times = {"encode": [], "index": []}
    index = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        rows = plain_encode(dictionary, store, step, batch_rows)
        times["encode"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index = build_feature_index(dictionary, store, steps=[step], config=cfg, progress=False, site=site)
        times["index"].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out = {"case": name, "kind": dictionary.kind, "latents": dictionary.num_latents, "width": dictionary.d_in,
           "k": getattr(dictionary, "k", None), "tokens": rows,
           "encode_tok_s": rows / med["encode"], "index_tok_s": rows / med["index"],
           "ratio": med["encode"] / med["index"], "state_MB": state_bytes(index) / 2**20,
           "alive": int(index.alive().sum())}
    print(f"{name:<28} F={out['latents']:>6}  tokens {rows:>7}  encode {out['encode_tok_s']:>9.0f} tok/s  "
          f"index {out['index_tok_s']:>9.0f} tok/s  ratio {out['ratio']:.3f}  state {out['state_MB']:.1f} MB  "
          f"alive {out['alive']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", default="768,16384,65536", help="comma-separated SAE sizes on the synthetic store")
    ap.add_argument("--images", type=int, default=256, help="synthetic images (×256 tokens) per case, fewer for "
                                                            "sizes whose encode would exceed --budget")
    ap.add_argument("--budget", type=float, default=2e11, help="encoder multiply-adds per pass at most")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-demo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = IndexConfig()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="difflens-index-bench-"))
    try:
        store = ActivationStore.open(synthetic_store(tmp / "store", args.images))
        for F in [int(x) for x in args.latents.split(",") if x]:
            sae = TopKSAE(96, SAEConfig(num_latents=F, k=args.k, normalization="none"), seed=0)
            sae.meta = {"site": SITE, "step": 3}
            # keep every case to --budget multiply-adds of encoding: fewer images for more latents
            n_img = max(cfg.batch_images * 2, min(args.images, int(args.budget / (F * 96 * 256))))
            if n_img < args.images:
                store_f = ActivationStore.open(synthetic_store(tmp / f"store-{F}", n_img))
            else:
                store_f = store
            results.append(case("synthetic sae", sae, store_f, 3, args.rounds, cfg))
        if not args.no_demo and (DEMO / "store" / "store.json").exists():
            demo = ActivationStore.open(DEMO / "store")
            for name in ("sae_pca", "itda", "neurons"):
                folder = DEMO / "dictionaries" / name
                if (folder / "cfg.json").exists():
                    d = load_dictionary(folder)
                    results.append(case(f"demo {name} {d.site}@{d.step}", d, demo, d.step, args.rounds, cfg))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    worst = min(r["ratio"] for r in results)
    print(json.dumps({"bench": "feature_index", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                      "top_n": cfg.top_n, "samples": cfg.samples, "histogram_bins": cfg.histogram_bins,
                      "batch_images": cfg.batch_images, "max_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "min_ratio": worst, "cases": results}))


if __name__ == "__main__":
    main()
