"""Where in the model do the shapes world's concepts live? A ground-truth scan over sites x denoising steps.

    nice -n 10 .venv/bin/python bench/truth_scan.py [--store runs/demo/store] [--sites S ...] [--steps 0 3 7]
                                                    [--num-latents 384] [--k 8] [--tokens 1500000]
                                                    [--normalization pca] [--seed 0] [--out runs/truth_scan]
                                                    [--sparse-sizes 1 4 16 | --sparse-sizes] [--probe-tokens 65536]

What is measured
  * For every (site, step) of an activation store (default: the demo store's image-stream residual sites
    ``*.img.out`` at every recorded step) one small TopK SAE is trained in memory on the store's train
    images with the same settings everywhere (``dl.train_sae``: ``--num-latents`` latents, k ``--k``,
    ``--tokens`` training tokens, batch 4096, Adam lr 1e-3, AuxK with k_aux = 2k, input normalisation
    ``--normalization`` (PCA whitening by default) fitted on the train split, seed ``--seed``, CPU).
  * ``truth_report`` (difflens.interpret.truth) then matches every latent to the oracle's token-level concepts
    (thresholds and concept choices on the train images, every number on the 20 % held-out images):
      explained_share   share of alive latents whose best concept reaches held-out F1 >= 0.5
      random floor      the same share for as many random unit directions (same k, same normaliser)
      mean coverage     mean over scored concepts of the held-out F1 of the single latent best for it on train
      random coverage   the same for the random directions
      probe ceiling     mean held-out F1 of a logistic probe per concept on the raw site activations
      cov/ceiling       mean over concepts of coverage / probe ceiling
      families_covered  concept families (the name before ':': color, pattern, part, ...) with at least one
                        concept whose best latent reaches 0.7 x its probe ceiling (``family_coverage``)
    plus the coverage (held-out F1 of the best single latent) of a few named concepts (``--concepts``;
    "-" when the concept is not scored at that site), and the SAE's held-out reconstruction quality
    (``dl.evaluate(sae)["fvu_input_space"]``: FVU in the normalised space the SAE sees).
  * Wall time per pair (train, truth report, evaluation, total), on one CPU thread.

The probe ceiling says how linearly readable a concept is at a site at all; coverage says whether one sparse
latent of a small SAE carries it; the random floor says how much of either comes from the geometry of the
activations rather than from learning. Sites are compared at a fixed budget, not at convergence.

Writes ``<out>/<site>@<step>.json`` (the full truth report of each pair, ``truth.write_truth``) and
``<out>/summary.json`` (settings, rows, means by site and by step, timings). The last printed line is JSON
with the table rows.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import difflens as dl  # noqa: E402
from difflens.atomic import atomic_write_json  # noqa: E402
from difflens.evaluation.metrics import format_table  # noqa: E402
from difflens.interpret.labels import store_world, token_labels  # noqa: E402
from difflens.interpret.truth import truth_report, write_truth  # noqa: E402

NAMED = ["color:red", "shape:triangle", "part:object", "bg:black", "side:below"]
NAMED_RICH = ["color:red", "pattern:striped", "texture:dotted", "part:house-roof", "part:boundary"]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--store", default="runs/demo/store", help="activation store (default: the demo's)")
parser.add_argument("--sites", nargs="+", default=None,
                    help="sites to scan (default: the store's image-stream .out sites)")
parser.add_argument("--steps", nargs="+", type=int, default=None, help="steps to scan (default: all recorded)")
parser.add_argument("--num-latents", type=int, default=384)
parser.add_argument("--k", type=int, default=8)
parser.add_argument("--tokens", type=int, default=1_500_000, help="training tokens per SAE (the demo's budget)")
parser.add_argument("--normalization", default="pca", choices=["none", "standardise", "pca"])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--concepts", nargs="+", default=None,
                    help="concepts whose coverage gets a column (default: a few of the store's world)")
parser.add_argument("--sparse-sizes", nargs="*", type=int, default=[1, 4, 16],
                    help="sparse-probe sizes (none: skip sparse probing, the slowest part of a truth report)")
parser.add_argument("--probe-tokens", type=int, default=65_536, help="tokens per split of the logistic probes")
parser.add_argument("--out", default="runs/truth_scan")
args = parser.parse_args()

torch.set_num_threads(1)

store_path = Path(args.store)
if not (store_path / "store.json").exists():
    sys.exit(f"truth_scan: no activation store at {store_path} (store.json missing). Build the demo store first "
             f"with `difflens demo` (it writes runs/demo/store), or pass --store PATH.")
store = dl.open_store(store_path)
if not store.holdout:
    sys.exit(f"truth_scan: {store_path} has no held-out split; truth reports need one (store.set_holdout(0.2)).")

if args.concepts is None:
    args.concepts = NAMED_RICH if store_world(store) == "rich" else NAMED
entries = store.entries()
recorded_sites = list(dict.fromkeys(s for s, _ in entries))
sites = args.sites or [s for s in recorded_sites
                       if s.endswith(".out") and store.reader(s, dict(entries)[s]).stream == "image"]
steps = args.steps or sorted({t for _, t in entries})
pairs = [(s, t) for s in sites for t in steps if (s, t) in entries]
missing = [f"{s}@{t}" for s in sites for t in steps if (s, t) not in entries]
if missing:
    print(f"[truth_scan] not recorded, skipped: {', '.join(missing)}", flush=True)
if not pairs:
    sys.exit("truth_scan: no (site, step) pair to scan")

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
settings = dict(k=args.k, num_latents=args.num_latents, num_tokens=args.tokens, batch_size=4096, lr=1e-3,
                k_aux=2 * args.k, dead_window_tokens=min(args.tokens // 4, 500_000), normalization=args.normalization,
                seed=args.seed, device="cpu", norm_fit_tokens=10**9, progress=False)
print(f"[truth_scan] {len(pairs)} pairs ({len(sites)} sites x steps {steps}) of {store_path}; SAE: "
      f"{args.num_latents} latents, k {args.k}, {args.tokens:,} tokens, {args.normalization}; out {out}", flush=True)

labels_by_grid = {}
rows, timings = [], []
scan_start = time.perf_counter()
for site, step in pairs:
    train_r = store.reader(site, step, "train")
    if train_r.stream != "image" or not train_r.grid:
        print(f"[truth_scan] {site}@{step}: a {train_r.stream}-stream site has no ground-truth labels, skipped",
              flush=True)
        continue
    grid = tuple(train_r.grid)
    if grid not in labels_by_grid:
        labels_by_grid[grid] = token_labels(store, grid=grid)
    t0 = time.perf_counter()
    sae = dl.train_sae(store, site, step, **settings)
    t1 = time.perf_counter()
    report = truth_report(sae, store, site=site, step=step, labels=labels_by_grid[grid], random_seed=args.seed,
                          sparse_sizes=tuple(args.sparse_sizes), max_probe_tokens=args.probe_tokens)
    t2 = time.perf_counter()
    ev = dl.evaluate(sae)
    t3 = time.perf_counter()
    report["scan"] = {"settings": {k: v for k, v in settings.items() if k != "progress"},
                      "fvu_input_space": ev["fvu_input_space"], "fvu_residual": ev["fvu_residual"],
                      "eval_split": ev["split"], "wall_s": {"train": t1 - t0, "truth": t2 - t1, "eval": t3 - t2}}
    write_truth(report, out / f"{site}@{step}.json")
    cov, ceil = report["coverage"], report["probe_ceiling"]
    row = {"site": site, "step": step,
           "explained": report["explained_share"], "expl_random": report["explained_share_random"],
           "coverage": report["mean_coverage"], "cov_random": report["mean_coverage_random"],
           "probe_ceiling": report["mean_probe_ceiling"], "cov/ceiling": report["mean_coverage_ratio"],
           **{c: cov.get(c, "-") for c in args.concepts},
           "families_covered": sum(f["covered"] > 0 for f in report["family_coverage"].values()),
           "families": len(report["family_coverage"]),
           "fvu_in": ev["fvu_input_space"], "alive": report["alive"], "concepts": len(report["concepts"]),
           "wall_s": round(t3 - t0, 1)}
    rows.append(row)
    timings.append({"site": site, "step": step, "train_s": round(t1 - t0, 1), "truth_s": round(t2 - t1, 1),
                    "eval_s": round(t3 - t2, 1), "total_s": round(t3 - t0, 1)})
    named = "  ".join(f"{c} {cov[c]:.3f}/{ceil[c]:.3f}" for c in args.concepts if c in cov)
    print(f"[truth_scan] {site}@{step}: explained {report['explained_share']:.3f} (random "
          f"{report['explained_share_random']:.3f}), coverage {report['mean_coverage']:.3f} (random "
          f"{report['mean_coverage_random']:.3f}, ceiling {report['mean_probe_ceiling']:.3f}), fvu_in "
          f"{ev['fvu_input_space']:.3f}; {named}; train {t1 - t0:.0f}s truth {t2 - t1:.0f}s eval {t3 - t2:.0f}s",
          flush=True)
total_s = time.perf_counter() - scan_start
if not rows:
    sys.exit("truth_scan: no image-stream pair was scanned")

METRICS = ["explained", "expl_random", "coverage", "cov_random", "probe_ceiling", "cov/ceiling", *args.concepts,
           "fvu_in"]


def means(key):
    """Mean of every metric over the rows sharing each value of `key` (site or step)."""
    groups = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    result = []
    for value, group in groups.items():
        m = {key: value, "pairs": len(group)}
        for col in METRICS:
            vals = [r[col] for r in group if isinstance(r[col], (int, float))]
            m[col] = sum(vals) / len(vals) if vals else "-"
        result.append(m)
    return result


by_site, by_step = means("site"), sorted(means("step"), key=lambda m: m["step"])
columns = ["site", "step", *METRICS, "families_covered", "families", "alive", "concepts", "wall_s"]
print("\nper (site, step): explained = share of alive latents with held-out F1 >= 0.5 (expl_random: random floor); "
      "coverage = mean held-out F1 of each concept's best latent (cov_random: floor; probe_ceiling: logistic probe "
      "on the raw activations); named columns: coverage of that concept; fvu_in: held-out FVU (input space)")
print(format_table(rows, columns))
print("\nmeans by site")
print(format_table(by_site, ["site", "pairs", *METRICS]))
print("\nmeans by step")
print(format_table(by_step, ["step", "pairs", *METRICS]))
print(f"\nwall time: {total_s:.0f} s for {len(rows)} pairs ({total_s / len(rows):.0f} s per pair; "
      f"train {sum(t['train_s'] for t in timings):.0f} s, truth {sum(t['truth_s'] for t in timings):.0f} s, "
      f"eval {sum(t['eval_s'] for t in timings):.0f} s in all)")

summary = {"store": str(store_path), "sites": sites, "steps": steps,
           "settings": {k: v for k, v in settings.items() if k != "progress"}, "concepts_named": args.concepts,
           "threads": torch.get_num_threads(), "rows": rows, "means_by_site": by_site, "means_by_step": by_step,
           "timings": timings, "wall_s": round(total_s, 1),
           "reports": [str(out / f"{r['site']}@{r['step']}.json") for r in rows]}
atomic_write_json(out / "summary.json", json.loads(json.dumps(summary, default=float)))
print(f"reports in {out}/<site>@<step>.json, summary {out / 'summary.json'}")
print(json.dumps(rows))
