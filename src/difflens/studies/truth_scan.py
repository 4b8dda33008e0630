"""Where in the model do the world's concepts live? A ground-truth scan over sites x denoising steps.

    difflens study scan [--store runs/demo/store] [--sites S,...] [--steps 0,3,7] [--num-latents 384] [--k 8]
        [--tokens 1500000] [--normalization pca] [--sparse-sizes 1,4,16 | --sparse-sizes ''] [--out runs/truth_scan]

For every (site, step) of an activation store (default: its image-stream residual sites ``*.img.out`` at every
recorded step) one small TopK SAE is trained in memory with the same recipe everywhere (`sae_recipe`:
`num_latents` latents, k, `tokens` training tokens, input normalisation fitted on the train split, CPU), then
`truth_report` matches its latents to the oracle's token-level concepts (choices on the train images, every number
on the held-out ones):

    explained         share of alive latents whose best concept reaches held-out F1 >= 0.5 (expl_random: the
                      same for as many random unit directions, same k and normaliser)
    coverage          mean over scored concepts of the held-out F1 of the single latent best for it on train
                      (cov_random: the random directions)
    probe_ceiling     mean held-out F1 of a logistic probe per concept on the raw site activations
    cov/ceiling       mean over concepts of coverage / probe ceiling
    families_covered  concept families with a concept whose best latent reaches 0.7 x its probe ceiling
plus the coverage of a few named concepts ("-" where not scored), the SAE's held-out FVU in the space it sees
(`fvu_in`) and wall seconds. The probe ceiling says how linearly readable a concept is at a site at all; coverage
whether one sparse latent of a small SAE carries it; the random floor how much of either comes from the geometry of
the activations. Sites are compared at a fixed budget, not at convergence.

Writes ``<out>/<site>@<step>.json`` (each pair's full truth report) and ``<out>/summary.json`` (settings, rows,
means by site and by step, timings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

# a few concepts per world whose coverage gets its own column
NAMED_CONCEPTS = {"classic": ["color:red", "shape:triangle", "part:object", "bg:black", "side:below"],
                  "rich": ["color:red", "pattern:striped", "texture:dotted", "part:house-roof", "part:boundary"]}
METRICS = ["explained", "expl_random", "coverage", "cov_random", "probe_ceiling", "cov/ceiling"]
SUMMARY_FILE = "summary.json"


@dataclass
class ScanConfig:
    """`difflens study scan`: one small SAE and its ground truth per (site, step) of a store."""

    store: str = "runs/demo/store"
    """activation store with a held-out split and its generated images"""
    sites: list[str] = field(default_factory=list)
    """sites to scan (empty: the store's image-stream .out sites)"""
    steps: list[int] = field(default_factory=list)
    """steps to scan (empty: every recorded step)"""
    num_latents: int = 384
    """latents of each SAE"""
    k: int = 8
    """active latents per token"""
    tokens: int = 1_500_000
    """training tokens per SAE (the demo's budget)"""
    normalization: Literal["none", "standardise", "pca"] = "pca"
    """input normalisation of each SAE, fitted on the train split"""
    seed: int = 0
    """SAE and random-direction seed"""
    concepts: list[str] = field(default_factory=list)
    """concepts whose coverage gets a column (empty: a few of the store's world)"""
    sparse_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    """sparse-probe sizes ('': skip sparse probing, the slowest part of a truth report)"""
    probe_tokens: int = 65_536
    """tokens per split of the logistic probes"""
    out: str = "runs/truth_scan"
    """folder of the per-pair reports and summary.json"""


def scan_pairs(store, sites: list[str], steps: list[int]) -> tuple[list[tuple[str, int]], list[str]]:
    """((site, step) pairs to scan, 'site@step' asked for but not recorded). Empty `sites`: the image-stream
    .out sites; empty `steps`: every recorded step."""
    entries = store.entries()
    recorded = dict(entries)
    sites = sites or [s for s in dict.fromkeys(s for s, _ in entries)
                      if s.endswith(".out") and store.reader(s, recorded[s]).stream == "image"]
    steps = steps or sorted({t for _, t in entries})
    pairs = [(s, t) for s in sites for t in steps if (s, t) in entries]
    return pairs, [f"{s}@{t}" for s in sites for t in steps if (s, t) not in entries]


def _row(report: dict, ev: dict, site: str, step: int, concepts: list[str], wall_s: float) -> dict:
    """One table row of a pair's truth report and evaluation."""
    cov = report["coverage"]
    return {"site": site, "step": step,
            "explained": report["explained_share"], "expl_random": report["explained_share_random"],
            "coverage": report["mean_coverage"], "cov_random": report["mean_coverage_random"],
            "probe_ceiling": report["mean_probe_ceiling"], "cov/ceiling": report["mean_coverage_ratio"],
            **{c: cov.get(c, "-") for c in concepts},
            "families_covered": sum(f["covered"] > 0 for f in report["family_coverage"].values()),
            "families": len(report["family_coverage"]),
            "fvu_in": ev["fvu_input_space"], "alive": report["alive"], "concepts": len(report["concepts"]),
            "wall_s": round(wall_s, 1)}


def group_means(rows: list[dict], key: str, metrics: list[str]) -> list[dict]:
    """Mean of every metric over the rows sharing each value of `key` (site or step); "-" where none is a number."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    result = []
    for value, group in groups.items():
        m = {key: value, "pairs": len(group)}
        for col in metrics:
            vals = [r[col] for r in group if isinstance(r[col], (int, float))]
            m[col] = sum(vals) / len(vals) if vals else "-"
        result.append(m)
    return result


def truth_scan(cfg: ScanConfig = ScanConfig(), log=print) -> dict:
    """Run the scan; writes the per-pair reports and summary.json in `cfg.out` and returns the summary. `log` gets
    a line per pair (and the pairs skipped)."""
    import torch

    import difflens as dl

    from difflens.interpret.labels import store_world, token_labels
    from difflens.dictionaries.train.config import sae_recipe
    from difflens.interpret.truth import truth_report, write_truth

    store = dl.open_store(cfg.store)
    if not store.holdout:
        raise ValueError(f"{cfg.store} has no held-out split; truth reports need one (store.set_holdout(0.2))")
    concepts = list(cfg.concepts) or NAMED_CONCEPTS[store_world(store)]
    pairs, missing = scan_pairs(store, list(cfg.sites), list(cfg.steps))
    if missing:
        log(f"not recorded, skipped: {', '.join(missing)}")
    if not pairs:
        raise ValueError(f"no (site, step) pair of {cfg.store} to scan")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(sae_recipe(cfg.k, cfg.num_latents, cfg.tokens), normalization=cfg.normalization, seed=cfg.seed,
                    device="cpu")
    labels_by_grid: dict = {}
    rows, timings = [], []
    start = time.perf_counter()
    for site, step in pairs:
        reader = store.reader(site, step, "train")
        if reader.stream != "image" or not reader.grid:
            log(f"{site}@{step}: a {reader.stream}-stream site has no ground-truth labels, skipped")
            continue
        grid = tuple(reader.grid)
        if grid not in labels_by_grid:
            labels_by_grid[grid] = token_labels(store, grid=grid)
        t0 = time.perf_counter()
        sae = dl.train_sae(store, site, step, progress=False, **settings)
        t1 = time.perf_counter()
        report = truth_report(sae, store, site=site, step=step, labels=labels_by_grid[grid], random_seed=cfg.seed,
                              sparse_sizes=tuple(cfg.sparse_sizes), max_probe_tokens=cfg.probe_tokens)
        t2 = time.perf_counter()
        ev = dl.evaluate(sae)
        t3 = time.perf_counter()
        report["scan"] = {"settings": settings, "fvu_input_space": ev["fvu_input_space"],
                          "fvu_residual": ev["fvu_residual"], "eval_split": ev["split"],
                          "wall_s": {"train": t1 - t0, "truth": t2 - t1, "eval": t3 - t2}}
        write_truth(report, out / f"{site}@{step}.json")
        rows.append(_row(report, ev, site, step, concepts, t3 - t0))
        timings.append({"site": site, "step": step, "train_s": round(t1 - t0, 1), "truth_s": round(t2 - t1, 1),
                        "eval_s": round(t3 - t2, 1), "total_s": round(t3 - t0, 1)})
        r = rows[-1]
        log(f"{site}@{step}: explained {r['explained']:.3f} (random {r['expl_random']:.3f}), coverage "
            f"{r['coverage']:.3f} (random {r['cov_random']:.3f}, ceiling {r['probe_ceiling']:.3f}), fvu_in "
            f"{r['fvu_in']:.3f}; {t3 - t0:.0f} s")
    if not rows:
        raise ValueError(f"no image-stream pair of {cfg.store} was scanned")
    metrics = [*METRICS, *concepts, "fvu_in"]
    summary = {"config": asdict(cfg), "store": str(cfg.store), "pairs": [f"{s}@{t}" for s, t in pairs],
               "settings": settings, "concepts_named": concepts, "metrics": metrics,
               "threads": torch.get_num_threads(), "rows": rows, "means_by_site": group_means(rows, "site", metrics),
               "means_by_step": sorted(group_means(rows, "step", metrics), key=lambda m: m["step"]),
               "timings": timings, "wall_s": round(time.perf_counter() - start, 1),
               "reports": [f"{r['site']}@{r['step']}.json" for r in rows]}
    write_truth(summary, out / SUMMARY_FILE)  # NaN-safe JSON, atomic
    return summary


def scan_tables(summary: dict) -> str:
    """The per-pair table and the means by site and by step, as fixed-width text."""
    from difflens.evaluation.metrics import format_table

    metrics = summary["metrics"]
    columns = ["site", "step", *metrics, "families_covered", "families", "alive", "concepts", "wall_s"]
    return ("per (site, step): explained = share of alive latents with held-out F1 >= 0.5 (expl_random: random "
            "floor); coverage = mean held-out F1 of each concept's best latent (cov_random: floor; probe_ceiling: "
            "logistic probe on the raw activations); named columns: coverage of that concept; fvu_in: held-out FVU "
            f"(input space)\n{format_table(summary['rows'], columns)}\n\nmeans by site\n"
            f"{format_table(summary['means_by_site'], ['site', 'pairs', *metrics])}\n\nmeans by step\n"
            f"{format_table(summary['means_by_step'], ['step', 'pairs', *metrics])}")
