"""Activation-store read throughput: shuffled and in-order batches of 4096 rows.

Builds a synthetic store (float16 rows, shards of `--shard-rows`, as a capture writes them)
in a temporary folder, then times `SiteReader.iter_batches` for one epoch each way, and,
for comparison, naive random row gathers (`read_rows` of random ids) -- the pattern that
makes shuffling dominate runtime in other tools. Reads come from the page cache (warm).

    python bench/store_read.py [--rows 131072] [--dim 3072] [--batch 4096] [--shard-rows 2048]
Last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
import torch

from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter


def build(root: str, rows: int, dim: int, shard_rows: int) -> None:
    w = StoreWriter(root, dtype="float16")
    w.prepare({"model": "synthetic"}, [])
    g = torch.Generator().manual_seed(0)
    n_chunks = (rows + shard_rows - 1) // shard_rows
    block = torch.randn(shard_rows, dim, generator=g)
    for c in range(n_chunks):
        n = min(shard_rows, rows - c * shard_rows)
        ids = np.arange(c * shard_rows, c * shard_rows + n)
        w.write_chunk(c, [], None, {("site", 0): ChunkRows(block[:n] + c, ids, np.zeros(n, dtype=np.int64))})
    w.finalize([EntrySpec("site", 0, dim, "image", 1, (1, 1))], n_chunks, {"model": "synthetic", "n_images": rows})


def epoch(reader, batch: int, shuffle: bool) -> tuple[float, float, int]:
    """(wall s, process CPU s, rows) of one epoch."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for acts, ids in reader.iter_batches(batch, shuffle=shuffle, seed=0):
        n += len(ids)
        acts.sum()  # touch the data, as training would
    return time.perf_counter() - t0, time.process_time() - c0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--shard-rows", type=int, default=2048)
    ap.add_argument("--gather-batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per mode (best kept)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="difflens-store-bench-")
    try:
        t0 = time.perf_counter()
        build(tmp, args.rows, args.dim, args.shard_rows)
        t_build = time.perf_counter() - t0
        reader = ActivationStore.open(tmp).reader("site", 0)
        mb_per_row = args.dim * 2 / 1e6
        epoch(reader, args.batch, shuffle=False)  # warm the page cache
        t_shuf, c_shuf, n = min(epoch(reader, args.batch, shuffle=True) for _ in range(args.repeats))
        t_seq, c_seq, _ = min(epoch(reader, args.batch, shuffle=False) for _ in range(args.repeats))
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(args.gather_batches):
            reader.read_rows(rng.integers(0, args.rows, args.batch)).sum()
        t_gather = (time.perf_counter() - t0) / (args.gather_batches * args.batch)
        res = {
            "rows": n, "dim": args.dim, "batch": args.batch, "shard_rows": args.shard_rows,
            "shuffled_rows_per_s": round(n / t_shuf), "shuffled_mb_per_s": round(n * mb_per_row / t_shuf, 1),
            "in_order_rows_per_s": round(n / t_seq), "in_order_mb_per_s": round(n * mb_per_row / t_seq, 1),
            "random_gather_rows_per_s": round(1 / t_gather), "shuffled_cpu_s": round(c_shuf, 3),
            "in_order_cpu_s": round(c_seq, 3), "torch_threads": torch.get_num_threads(), "write_mb_per_s": round(n * mb_per_row / t_build, 1),
        }
        print(f"store            {n} rows x {args.dim} float16 = {n * mb_per_row:.0f} MB in shards of {args.shard_rows} rows"
              f" (written at {res['write_mb_per_s']} MB/s with fsync)")
        print(f"shuffled epoch   {t_shuf:.2f} s: {res['shuffled_rows_per_s']:,} rows/s, {res['shuffled_mb_per_s']} MB/s"
              f" (batches of {args.batch}, float32 out; {c_shuf:.2f} s CPU)")
        print(f"in-order epoch   {t_seq:.2f} s: {res['in_order_rows_per_s']:,} rows/s, {res['in_order_mb_per_s']} MB/s ({c_seq:.2f} s CPU)")
        print(f"random gathers   {res['random_gather_rows_per_s']:,} rows/s (naive per-row shuffle, for comparison)")
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
