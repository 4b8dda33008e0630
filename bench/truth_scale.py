"""Ground-truth report time and peak memory against dictionary size, on the demo store.

    python bench/truth_scale.py [--run runs/demo] [--latents 768,16384,65536] [--threads 2]

For each size: a dictionary of that many random unit directions (k 16, the demo SAE's normaliser; the report's
cost depends on the size, k and the store, not on what the directions learned) at the demo's site and step,
reported by `truth_report` with no controls, no sparse probes and no bootstrap (the per-latent passes, union
coverage and absorption), and the demo's own `sae_pca` with the defaults of `difflens features truth` (random
and untrained controls, bootstrap). The labels are built once beforehand (cached in the store) and the probe
ceiling once per process (it does not depend on the dictionary; its time is printed on its own).
Columns: wall seconds, latent ranges the histograms were split into (`truth_stats.latent_ranges`, 1 GiB each),
and the process's peak RSS in MB after the case (peak RSS never falls, so read it as a running maximum).
Last line: JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--latents", default="768,16384,65536")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import difflens as dl
    from difflens.interpret.labels import token_labels
    from difflens.interpret.truth import RandomDirections, truth_report
    from difflens.interpret.truth_stats import latent_ranges

    sae = dl.load_dictionary(Path(a.run) / "dictionaries" / "sae_pca")
    store = dl.open_store(Path(a.run) / "store")
    labels = token_labels(store)
    rows = []
    start = time.time()
    truth_report(RandomDirections(sae.d_in, 16, 16, copy.deepcopy(sae.normalizer)), store, site=sae.site,
                 step=sae.step, labels=labels, sparse_sizes=(), controls=(), bootstrap=0)
    rows.append({"case": "probe ceiling + 16 latents", "latents": 16, "seconds": round(time.time() - start, 1),
                 "ranges": 1, "peak_rss_mb": round(peak_rss_mb())})
    print(rows[-1], flush=True)
    for n in [int(x) for x in a.latents.split(",") if x]:
        d = RandomDirections(sae.d_in, n, 16, copy.deepcopy(sae.normalizer), seed=1)
        start = time.time()
        report = truth_report(d, store, site=sae.site, step=sae.step, labels=labels, sparse_sizes=(), controls=(),
                              bootstrap=0)
        rows.append({"case": "random directions", "latents": n, "seconds": round(time.time() - start, 1),
                     "ranges": len(latent_ranges(n, len(report["concepts"]))), "peak_rss_mb": round(peak_rss_mb())})
        print(rows[-1], flush=True)
    start = time.time()
    report = truth_report(sae, store, labels=labels, sparse_sizes=())
    rows.append({"case": "demo sae_pca, CLI defaults", "latents": sae.num_latents,
                 "seconds": round(time.time() - start, 1), "ranges": 1, "peak_rss_mb": round(peak_rss_mb())})
    print(rows[-1], flush=True)
    print(f"{'case':<30} {'latents':>8} {'seconds':>8} {'ranges':>7} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['case']:<30} {r['latents']:>8} {r['seconds']:>8} {r['ranges']:>7} {r['peak_rss_mb']:>12}")
    print(json.dumps({"concepts": len(report["concepts"]), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
