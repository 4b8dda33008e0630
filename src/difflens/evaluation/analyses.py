"""Analyses: residual norms by layer × step, PCA spectrum, k/size sweep, across layers, across steps (and a
dictionary across steps against one-step dictionaries)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from difflens.dictionaries.io import load_dictionary
from difflens.dictionaries.normalization import Normalizer, StepNormalizers
from difflens.dictionaries.train import RunConfig, SAETrainConfig, train_sae
from difflens.dictionaries.train.data import resolve_data
from difflens.store.run_layout import find_dictionaries

from . import plots
from .metrics import INPUT_SPACE, evaluate

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


def sweep_k_size(source, ks: list[int], sizes: list[int], train: SAETrainConfig, out: Path, *,
                 site: str | None = None, step: int | None = None, eval_source=None, eval_tokens: int = 50_000,
                 run: RunConfig | None = None) -> list[dict]:
    """Train one SAE per (size, k), each on ``train.num_tokens`` tokens, and evaluate it on held-out rows
    (the FLUX paper's figure 6). Plots FVU vs k per size and vs size per k, in the SAE's loss space and
    in residual space, plus the dead fraction; folders ``out/sweep/d<size>_k<k>`` resume."""
    data = resolve_data(source, site, step)
    run = run or RunConfig(checkpoint_every=0, progress=False)
    rows = []
    for size in sizes:
        for k in ks:
            if k > size:
                continue
            sae = train_sae(data, replace(train, num_latents=size, k=k),
                            replace(run, out=str(Path(out) / "sweep" / f"d{size}_k{k}")))
            rows.append({**evaluate(sae.cpu(), eval_source, max_tokens=eval_tokens), "num_latents": size, "k": k})
    plot_sweep(rows, Path(out), data.site or "activations", train.num_tokens)
    return rows


def plot_sweep(rows: list[dict], out: Path, site: str, tokens: int) -> None:
    """sweep_fvu_vs_k.png, sweep_fvu_vs_size.png (each: loss space | residual space), sweep_dead_fraction.png."""
    if not rows:
        return
    sizes = sorted({r["num_latents"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    loss_space = rows[0]["loss_space"]
    metrics = [("fvu_input_space" if loss_space != "residual" else "fvu_residual", f"FVU ({loss_space} space: the SAE's loss)"),
               ("fvu_residual", "FVU (residual space)")]

    def series(by: str, over: str, metric: str) -> dict:
        groups = sizes if by == "num_latents" else ks
        name = "latents" if by == "num_latents" else "k"
        return {f"{name} {g}": ([r[over] for r in rows if r[by] == g], [r[metric] for r in rows if r[by] == g])
                for g in groups}

    note = f"{site}, {tokens:,} training tokens each, held-out tokens"
    plots.panels([(series("num_latents", "k", m), "k", label, note) for m, label in metrics],
                 out / "sweep_fvu_vs_k.png", logx=True)
    plots.panels([(series("k", "num_latents", m), "latents", label, note) for m, label in metrics],
                 out / "sweep_fvu_vs_size.png", logx=True)
    window = rows[0]["tokens"]
    plots.panels([(series("num_latents", "k", "dead_fraction"), "k", f"dead fraction (no firing in {window:,} tokens)", note)],
                 out / "sweep_dead_fraction.png", logx=True)


def across_layers(store_path, run_dir: Path, step: int | None, eval_tokens: int, out_dir: Path) -> list[dict]:
    """Evaluate every dictionary in ``run_dir`` on its site (held-out rows of its own store, as `evaluate`) and plot
    FVU / dead fraction by depth (figure 8)."""
    rows = []
    for name, folder in find_dictionaries(run_dir).items():
        d = load_dictionary(folder)
        rows.append(evaluate(d, store_path, site=d.site or name, step=step, max_tokens=eval_tokens))
    rows.sort(key=lambda r: layer_key(r["site"]))
    for metric in ("fvu_residual", "fvu_input_space", "dead_fraction"):
        by_kind: dict[str, tuple[list, list]] = {}
        for r in rows:
            xs, ys = by_kind.setdefault(r["kind"], ([], []))
            xs.append(r["site"])
            ys.append(r[metric])
        plots.lines(by_kind, "site", metric, f"{metric} across layers", out_dir / f"layers_{metric}.png")
    return rows


def across_steps(dictionary, source=None, *, steps: list[int] | str = "all", sites: list[str] | None = None,
                 split: str = "auto", max_tokens: int = 50_000, out_dir: Path | None = None) -> list[dict]:
    """Evaluate one dictionary on every recorded step of its site (and of ``sites`` of the same width): does a
    dictionary trained at one denoising step transfer to the others, how does one trained across steps do at each?
    Plots FVU by step, one line per site. A dictionary with one normaliser per step can only read its own steps:
    "all" means those, and other steps are refused."""
    from difflens.store.sources import open_store

    if (steps != "all") if isinstance(steps, str) else not list(steps):
        raise ValueError(f"--steps takes step indices such as 0 or 0,3,7, or all; got {steps!r}")
    path = source if source is not None else dictionary.locate_store()
    store = open_store(path) if isinstance(path, (str, Path)) else path
    rows = []
    own = dictionary.normalizer.steps if isinstance(dictionary.normalizer, StepNormalizers) else None
    for site in [dictionary.site, *(s for s in sites or [] if s != dictionary.site)]:
        stored = sorted(t for s, t in store.entries() if s == site)
        if not stored:
            raise ValueError(f"site {site!r} is not in store {getattr(store, 'root', '')}")
        wanted = (own or stored) if steps == "all" else [int(t) for t in steps]
        missing = sorted(set(wanted) - set(stored))
        if missing:
            raise ValueError(f"site {site!r} has no step(s) {missing} in the store; stored steps: {stored}")
        for t in wanted:
            row = evaluate(dictionary, store, site=site, step=t, split=split, max_tokens=max_tokens)
            rows.append({**row, "trained_step": dictionary.step, "trained_steps": dictionary.steps,
                         "trained_site": dictionary.site})
    if out_dir is not None:
        trained = dictionary.steps or [dictionary.step]
        label = f"{dictionary.kind} trained on {dictionary.site} step{'s' if len(trained) > 1 else ''} " + \
            ",".join(str(t) for t in trained)
        for metric, ylabel in (("fvu_residual", "FVU (residual space)"),
                               ("fvu_input_space", f"FVU ({INPUT_SPACE[dictionary.normalizer.kind]} space)")):
            series = {s: ([r["step"] for r in rows if r["site"] == s], [r[metric] for r in rows if r["site"] == s])
                      for s in dict.fromkeys(r["site"] for r in rows)}
            plots.lines(series, "denoising step", ylabel, label, Path(out_dir) / f"steps_{metric}.png",
                        hline=(1.0, "FVU 1: no better than the mean"))
    return rows


def compare_per_step(spanning, per_step, source=None, *, split: str = "auto", max_tokens: int = 50_000) -> list[dict]:
    """Does one dictionary across steps match one-step dictionaries at each step? ``per_step``: dictionaries
    (or folders) of the same site, one step each, of the spanning one's width (num_latents; a different width is
    refused). One row per step both cover: each one's FVU (residual and input space) and L0 on the same rows,
    and the differences (spanning − per-step; compare at equal L0: ``l0_spanning`` vs ``l0_per_step``)."""
    from difflens.store.sources import open_store

    path = source if source is not None else spanning.locate_store()
    store = open_store(path) if isinstance(path, (str, Path)) else path
    by_step = {}
    for d in (load_dictionary(d) if isinstance(d, (str, Path)) else d for d in per_step):
        if d.site != spanning.site or d.step is None or d.meta.get("denoising_steps"):
            raise ValueError(f"{d.path or 'a dictionary'} is not a one-step dictionary of site {spanning.site!r} "
                             f"(site {d.site!r}, steps {d.steps})")
        if d.num_latents != spanning.num_latents:
            raise ValueError(f"compare at equal width: {d.path or 'the step ' + str(d.step) + ' dictionary'} has "
                             f"{d.num_latents} latents, the dictionary across steps {spanning.num_latents}")
        by_step[d.step] = d
    shared = [t for t in (spanning.steps or []) if t in by_step]
    if not shared:
        raise ValueError(f"no step in common: the dictionary spans steps {spanning.steps}, the one-step dictionaries "
                         f"are at {sorted(by_step)}")
    rows = []
    for t in shared:
        mine = evaluate(spanning, store, site=spanning.site, step=t, split=split, max_tokens=max_tokens)
        theirs = evaluate(by_step[t], store, site=spanning.site, step=t, split=split, max_tokens=max_tokens)
        row = {"site": spanning.site, "step": t, "split": mine["split"], "num_latents": spanning.num_latents,
               "tokens": mine["tokens"]}
        for key in ("fvu_residual", "fvu_input_space", "l0"):
            row[f"{key}_spanning"], row[f"{key}_per_step"] = mine[key], theirs[key]
        row["fvu_residual_difference"] = mine["fvu_residual"] - theirs["fvu_residual"]
        rows.append(row)
    return rows
