"""`difflens eval` and `difflens analyze`: flags built from their configs, thin over the evaluation API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from difflens.configs import add_command, config_from_args



@dataclass
class EvalCommand:
    """`difflens eval`: metrics of trained dictionaries on held-out activations."""

    run: str
    """run folder (a demo run, a `train --out` folder) or one dictionary folder"""
    store: str | None = None
    """activation store to evaluate on (default: the store each dictionary was trained on)"""
    split: Literal["auto", "held-out", "all", "train"] = "auto"
    """rows to use: auto = the held-out images of the training store (all rows of another store)"""
    step: int | None = None
    """denoising step to evaluate at (default: the dictionary's own)"""
    steps: list[int] | str | None = None
    """evaluate on these recorded steps of the site ('all' or 0,3,7) and plot FVU by step"""
    sites: list[str] | None = None
    """with --steps: also evaluate on these sites of the same width"""
    compare_per_step: str | None = None
    """folder of one-step dictionaries of the same site and width (a run folder, or one dictionary): compare each
    dictionary across steps in --run with them at every step both cover (FVU, L0; compare.json beside the metrics)"""
    tokens: int = 100_000
    """evaluation window in tokens"""
    batch_size: int = 4096
    """tokens per batch"""
    out: str | None = None
    """metrics JSON (default <run>/metrics.json); plots go beside it"""
    device: str = "cpu"
    """device to evaluate on"""


@dataclass
class AnalyzeCommand:
    """`difflens analyze`: residual norms, PCA spectrum, k/size sweep, across-layer comparison."""

    store: str
    """activation store folder"""
    out: str
    """folder for analysis.json and the plots"""
    what: list[str] = field(default_factory=lambda: ["norms", "pca"])
    """comma list of: norms, pca, sweep, layers"""
    site: str | None = None
    """site for pca and sweep"""
    step: int | None = None
    """denoising step (needed when several are stored)"""
    ks: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """sweep: active latents per token"""
    sizes: list[int] = field(default_factory=lambda: [1024, 4096])
    """sweep: SAE sizes (latents)"""
    tokens: int = 1_000_000
    """sweep: training tokens per SAE (the same budget for every SAE); pca/norms: tokens read"""
    eval_tokens: int = 50_000
    """sweep and layers: held-out evaluation tokens"""
    batch_size: int = 4096
    """sweep: tokens per optimiser step"""
    lr: float | None = None
    """sweep: learning rate (none: each SAE's size-scaled default, 2e-4 / sqrt(latents / 16384))"""
    normalization: Literal["none", "standardise", "pca"] = "pca"
    """sweep: input normalisation"""
    loss_space: Literal["input", "residual"] = "input"
    """sweep: where the SAE's loss is measured"""
    run: str | None = None
    """layers: run folder with one dictionary per site (a demo run, a `train --out` folder)"""


def register(subparsers) -> None:
    add_command(subparsers, "eval", "FVU (residual and input space), L0 and dead fraction on held-out activations",
                cmd_eval, EvalCommand)
    add_command(subparsers, "analyze", "residual norms, PCA spectrum, k/size sweep, across layers (JSON + PNG)",
                cmd_analyze, AnalyzeCommand)


def cmd_eval(args) -> int:
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.run_layout import METRICS_FILE, find_dictionaries, is_dictionary

    from .analyses import across_steps, compare_per_step
    from .metrics import TABLE, evaluate, format_table

    cmd = config_from_args(EvalCommand, args)
    run = Path(cmd.run)
    out = Path(cmd.out) if cmd.out else (run.parent if is_dictionary(run) else run) / METRICS_FILE
    rows, compared = [], []
    one_step_all = [o for o in map(load_dictionary, find_dictionaries(cmd.compare_per_step).values())
                    if not o.meta.get("denoising_steps")] if cmd.compare_per_step else []  # loaded once
    for name, folder in find_dictionaries(run).items():
        d = load_dictionary(folder)
        if cmd.compare_per_step and d.meta.get("denoising_steps"):
            one_step = [o for o in one_step_all if o.site == d.site]  # other sites: not compared
            compared += [{"name": name, **r} for r in compare_per_step(d, one_step, cmd.store, split=cmd.split,
                                                                      max_tokens=cmd.tokens)]
        if cmd.steps is not None:
            found = across_steps(d, cmd.store, steps=cmd.steps, sites=cmd.sites, split=cmd.split,
                                 max_tokens=cmd.tokens, out_dir=out.parent / f"steps_{name}")
        else:
            found = [evaluate(d, cmd.store, step=cmd.step, split=cmd.split, max_tokens=cmd.tokens,
                              batch_size=cmd.batch_size, device=cmd.device)]
        rows += [{"name": name, "dictionary": str(folder), **r} for r in found]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fvu_definition": "sum|x-xhat|^2 / sum|x-mean(x)|^2 over the evaluated tokens; "
                                                 "fvu_residual in the captured activations' space, fvu_input_space "
                                                 "in the dictionary's (normalised) input space",
                               "results": rows}, indent=2))
    print(format_table(rows, ["name", *TABLE]))
    if cmd.compare_per_step:
        if not compared:
            raise ValueError(f"--compare-per-step: no dictionary across several steps in {run} to compare")
        (out.parent / "compare.json").write_text(json.dumps({"results": compared}, indent=2))
        print(format_table(compared, ["name", "step", "num_latents", "fvu_residual_spanning", "fvu_residual_per_step",
                                      "l0_spanning", "l0_per_step"]))
        print(f"wrote {out.parent / 'compare.json'}")
    for split in sorted({r["split"] for r in rows}):
        print(f"split: {split}" + ("  (in-sample: these rows include training rows)" if any(
            r["in_sample"] for r in rows if r["split"] == split) else ""))
    print(f"wrote {out}")
    return 0


def cmd_analyze(args) -> int:
    from difflens.dictionaries.train import SAETrainConfig
    from difflens.dictionaries.train.data import resolve_data
    from difflens.store.sources import open_store

    from . import analyses
    from .metrics import format_table

    cmd = config_from_args(AnalyzeCommand, args)
    what = set(cmd.what)
    unknown = what - {"norms", "pca", "sweep", "layers"}
    if unknown:
        raise ValueError(f"unknown analyses {sorted(unknown)}; choose from norms, pca, sweep, layers")
    out = Path(cmd.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if "norms" in what:
        report["residual_norms"] = analyses.residual_norms(open_store(cmd.store), max_tokens=min(cmd.tokens, 20_000),
                                                           out_dir=out)
    if what & {"pca", "sweep"}:
        if not cmd.site:
            raise ValueError("--site is required for the pca and sweep analyses")
        data = resolve_data(cmd.store, cmd.site, cmd.step)
        if "pca" in what:
            report["pca_spectrum"] = analyses.pca_spectrum(data.reader, data.site, max_tokens=cmd.tokens, out_dir=out)
            print(f"{data.site}: top PC holds {report['pca_spectrum']['top1_fraction']:.1%} of the variance; "
                  f"{report['pca_spectrum']['components_for_90pct']} components hold 90 %")
        if "sweep" in what:
            train = SAETrainConfig(batch_size=cmd.batch_size, num_tokens=cmd.tokens, lr=cmd.lr,
                                   normalization=cmd.normalization, loss_space=cmd.loss_space)
            rows = analyses.sweep_k_size(data, cmd.ks, cmd.sizes, train, out, eval_tokens=cmd.eval_tokens)
            report["sweep"] = rows
            print(format_table(rows, ["num_latents", "k", "split", "loss_space", "fvu_input_space", "fvu_residual",
                                      "l0", "dead_fraction"]))
    if "layers" in what:
        if not cmd.run:
            raise ValueError("--run is required for the layers analysis")
        rows = analyses.across_layers(cmd.store, Path(cmd.run), cmd.step, cmd.eval_tokens, out)
        report["layers"] = rows
        print(format_table(rows, ["site", "kind", "split", "fvu_residual", "fvu_input_space", "l0", "dead_fraction"]))
    (out / "analysis.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'analysis.json'} and {len(list(out.glob('*.png')))} plots in {out}")
    return 0
