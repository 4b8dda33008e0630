"""Store-level analyses: residual norms by layer × step, PCA spectrum, k/size and layer sweeps."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from difflens.dictionaries.io import load_dictionary
from difflens.dictionaries.normalization import Normalizer
from difflens.dictionaries.topk_sae import SAEConfig
from difflens.dictionaries.trainer import RunConfig, SAETrainConfig, train_sae

from . import plots
from .metrics import evaluate

SITE_RE = re.compile(r"^(double|single)\.(\d+)\.(img|txt)\.(\w+)$")


def layer_key(site: str) -> tuple[int, int]:
    """Depth order: double blocks before single blocks."""
    m = SITE_RE.match(site)
    if not m:
        return (2, 0)
    return (0 if m.group(1) == "double" else 1, int(m.group(2)))


def residual_norms(store, kind: str = "out", max_tokens: int = 20_000, out_dir: Path | None = None) -> dict:
    """Mean L2 norm of image and text tokens for every ``*.{img,txt}.<kind>`` site × step."""
    result: dict = {}
    for stream in ("img", "txt"):
        sites = sorted({s for s, _ in store.entries() if (m := SITE_RE.match(s)) and m.group(3) == stream and m.group(4) == kind},
                       key=layer_key)
        steps = sorted({st for s, st in store.entries() if s in sites})
        if not sites:
            continue
        mat = np.full((len(sites), len(steps)), np.nan)
        for i, site in enumerate(sites):
            for j, step in enumerate(steps):
                if (site, step) not in store.entries():
                    continue
                reader = store.reader(site, step)
                total, n = 0.0, 0
                for acts, _ in reader.iter_batches(4096, shuffle=True, seed=0):
                    acts = acts[: max_tokens - n]
                    total += float(acts.float().norm(dim=1).sum())
                    n += acts.shape[0]
                    if n >= max_tokens:
                        break
                mat[i, j] = total / max(n, 1)
        result[stream] = {"sites": sites, "steps": steps, "mean_norm": mat.tolist()}
        if out_dir is not None:
            name = "image" if stream == "img" else "text"
            plots.heatmap(mat, sites, [str(s) for s in steps], f"mean {name}-token norm ({kind})",
                          out_dir / f"residual_norms_{name}.png", "mean ‖x‖")
    return result


def pca_spectrum(reader, site: str, max_tokens: int = 200_000, out_dir: Path | None = None) -> dict:
    """Eigenvalues of the site's covariance (streamed fit) and how many components hold 50/90/99 %."""
    def batches():
        n = 0
        for acts, _ in reader.iter_batches(8192, shuffle=True, seed=0):
            yield acts[: max_tokens - n]
            n += acts.shape[0]
            if n >= max_tokens:
                return

    norm = Normalizer.fit(batches(), reader.dim, "pca", min_tokens_per_dim=1.0)
    var = norm.variances.double().numpy()
    cum = np.cumsum(var) / max(var.sum(), 1e-30)
    out = {"site": site, "variances": var.tolist(),
           **{f"components_for_{p}pct": int(np.searchsorted(cum, p / 100) + 1) for p in (50, 90, 99)},
           "top1_fraction": float(var[0] / max(var.sum(), 1e-30))}
    if out_dir is not None:
        plots.spectrum(var, f"PCA spectrum of {site}", out_dir / f"pca_spectrum_{site}.png")
    return out


def sweep_k_size(reader, site: str, ks: list[int], sizes: list[int], train: SAETrainConfig, run: RunConfig,
                 normalization: str = "pca", eval_tokens: int = 50_000) -> list[dict]:
    """Train one SAE per (k, size) and evaluate it (the paper's figure 6)."""
    rows = []
    for size in sizes:
        for k in ks:
            if k > size:
                continue
            sub = replace(run, out=str(Path(run.out) / "sweep" / f"d{size}_k{k}"), site=site, progress=False)
            sae = train_sae(reader, SAEConfig(num_latents=size, k=k, normalization=normalization), train, sub, resume=True)
            rows.append({"site": site, "num_latents": size, "k": k, **evaluate(sae.cpu(), reader, max_tokens=eval_tokens)})
    out_dir = Path(run.out)
    for metric in ("fvu", "dead_fraction"):
        series = {f"{s} latents": ([r["k"] for r in rows if r["num_latents"] == s], [r[metric] for r in rows if r["num_latents"] == s])
                  for s in sizes}
        plots.lines(series, "k", metric, f"{site}: {metric} vs k", out_dir / f"sweep_{metric}.png", logx=True)
    return rows


def across_layers(store_path, run_dir: Path, step: int | None, eval_tokens: int, out_dir: Path) -> list[dict]:
    """Evaluate every dictionary in ``run_dir`` on its site and plot FVU / dead fraction by depth (figure 8)."""
    from difflens.dictionaries.sources import open_reader

    rows = []
    for folder in sorted(p for p in Path(run_dir).iterdir() if (p / "cfg.json").exists()):
        d = load_dictionary(folder)
        reader = open_reader(store_path, folder.name, step)
        rows.append({"site": folder.name, **evaluate(d, reader, max_tokens=eval_tokens)})
    rows.sort(key=lambda r: layer_key(r["site"]))
    for metric in ("fvu", "dead_fraction"):
        by_kind: dict[str, tuple[list, list]] = {}
        for r in rows:
            xs, ys = by_kind.setdefault(r["kind"], ([], []))
            xs.append(r["site"])
            ys.append(r[metric])
        plots.lines(by_kind, "site", metric, f"{metric} across layers", out_dir / f"layers_{metric}.png")
    return rows
