"""The ground-truth study: which dictionaries carry the world's concepts, where, and above which controls.

    difflens study truth --run runs/demo [--seeds 0,1,2] [--steps 0,3,7] [--step-seeds 0]
        [--sites double.3.img.out,double.1.img.out] [--sizes 192:4,384:8,768:16,1536:32]

On a demo run (its store, site, step and recipe), three parts: (1) **dictionaries** — the FLUX paper's comparison
at the demo's site and step: plain, whitened and residual-loss TopK SAEs, ITDA and MLP neurons, each over
`seeds`; (2) **steps** — the whitened SAE at every site of `sites` × step of `steps`, on the trained model and on
the **random-model control**: a capture of a randomly initialised copy of the transformer fed the trained model's
own inputs at every step (`capture --control random-init`), trained with the same recipe and labelled by the same
images; (3) **sizes** — the whitened SAE at several (latents, k). Every report carries its random-direction and
untrained-dictionary controls (`truth_report`). Writes ``<out>/study.json`` (every report's summary) and
``<out>/study.md`` (per part: mean over seeds [bootstrap interval averaged over seeds] (the seeds' range)).
Every stage resumes: finished dictionaries reload, finished reports are read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difflens.dictionaries.train.config import sae_recipe
from difflens.reading import CorruptFileError, read_json
from difflens.store.run_layout import store_folder, summary_path, truth_path

METHODS = ("sae_pca", "sae_none", "sae_pca_residual_loss", "itda", "neurons")
SAE_VARIANTS = {"sae_pca": dict(normalization="pca"), "sae_none": dict(normalization="none"),
                "sae_pca_residual_loss": dict(normalization="pca", loss_space="residual")}
SIZES = ((192, 4), (384, 8), (768, 16), (1536, 32))  # (latents, k) of the size part
MEASURES = ("precise_share", "precise_share_coarse", "ap_share", "f1_share", "mean_union_f1", "mean_absorption")


def _train(method: str, store, site: str, step: int, seed: int, folder: Path, cfg: dict):
    import difflens as dl

    if method in SAE_VARIANTS:
        return dl.train_sae(store, site, step, out=folder, seed=seed,
                            **sae_recipe(cfg["k"], cfg["num_latents"], cfg["sae_tokens"]), **SAE_VARIANTS[method])
    if method == "itda":
        return dl.train_itda(store, site, step, out=folder, k=cfg["k"], threshold=cfg["itda_threshold"],
                             max_atoms=4 * cfg["num_latents"], num_tokens=cfg["itda_tokens"], seed=seed,
                             norm_fit_tokens=10**9)
    if method == "neurons":
        return dl.neuron_baseline(store, site.rsplit(".", 1)[0] + ".mlp", step, k=cfg["k"], out=folder)
    raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")


@dataclass
class DemoRun:
    """A demo run folder as the studies read it: its store, site and step, its config (summary.json's), and the
    dictionary shape of its recipe (k, num_latents = expansion x width, sae_tokens, itda_tokens, itda_threshold)."""

    folder: Path
    config: dict
    site: str
    step: int
    store: object
    recipe: dict


def open_run(run: str | Path) -> DemoRun:
    """The demo run at `run` (summary.json and its store)."""
    import difflens as dl

    run = Path(run)
    summary = read_json(summary_path(run), "run summary", hint="rerun `difflens demo`", expect=dict)
    cfg, site, step = summary["config"], summary["site"], int(summary["step"])
    store = dl.open_store(store_folder(run))
    width = store.reader(site, step, "train").dim
    recipe = {"k": cfg["k"], "num_latents": cfg["expansion_factor"] * width, "sae_tokens": cfg["sae_tokens"],
              "itda_tokens": cfg.get("itda_tokens"), "itda_threshold": cfg.get("itda_threshold")}
    return DemoRun(run, cfg, site, step, store, recipe)


def cached_report(dictionary, path: Path, labels, step: int | None = None) -> dict:
    """The ground-truth report (with its random and untrained controls, no sparse probes) of `dictionary` at
    `step` (default: its own), read back from `path` when a finished one is there, else computed and written (a
    corrupt one is rebuilt: write_truth says so as it replaces it)."""
    from difflens.interpret.truth import truth_report, write_truth

    corrupt = False
    if path.exists():
        try:
            return read_json(path, "ground-truth report", expect=dict)
        except CorruptFileError:
            corrupt = True
    report = truth_report(dictionary, labels=labels, step=step, sparse_sizes=())
    write_truth(report, path, overwrite=corrupt)
    return read_json(path, "ground-truth report", expect=dict)


def report_row(report: dict, **keys) -> dict:
    """`keys` plus a report's summary measures flat: "<control>.<measure>" and "<control>.<measure>.interval"."""
    row = dict(keys)
    for control, s in report["summary"].items():
        for m in MEASURES:
            row[f"{control}.{m}"] = s.get(m)
        for m, iv in (s.get("intervals") or {}).items():
            row[f"{control}.{m}.interval"] = iv
    row["probe_ceiling"] = report.get("mean_probe_ceiling")
    row["detection_token"] = (report.get("detection") or {}).get("mean_token")
    return row


def run_study(run: str | Path, out: str | Path | None = None, seeds=(0, 1, 2), steps=(0, 3, 7),
              methods=METHODS, random_model: bool = True, step_seeds=None, sites=None, sizes=SIZES) -> dict:
    """Run (or resume) the study on a demo run folder; returns {"rows": [...], "table": markdown}.

    Three parts: the dictionaries (`methods` × `seeds` at the demo's site and step); the whitened SAE on the
    trained and the random model at every site of `sites` (default: the demo's) × `steps`, over `step_seeds`
    (default: `seeds`); the whitened SAE at each (latents, k) of `sizes` at the demo's site and step (seed 0)."""
    from difflens.interpret.labels import token_labels

    demo = open_run(run)
    run, cfg, site, main_step, store, recipe = demo.folder, demo.config, demo.site, demo.step, demo.store, demo.recipe
    out = Path(out) if out is not None else run / "truth_study"
    labels = token_labels(store)
    sites = list(sites or [site])
    rows = []

    def one(part: str, model: str, st, method: str, at: str, step: int, seed: int, size: tuple | None = None):
        shape = dict(recipe, **({"num_latents": size[0], "k": size[1]} if size else {}))
        name = method + (f"_{size[0]}k{size[1]}" if size else "")
        folder = out / model / at / f"step{step}" / name / f"seed{seed}"
        report = cached_report(_train(method, st, at, step, seed, folder, shape), truth_path(folder), labels)
        rows.append(report_row(report, part=part, model=model, method=method, site=at, step=step, seed=seed,
                               latents=report["num_latents"], k=report["k"]))
        print(json.dumps({k: rows[-1][k] for k in ("part", "model", "method", "site", "step", "seed",
                                                   "dictionary.precise_share")}), flush=True)

    for method in methods:
        for seed in (seeds if method != "neurons" else seeds[:1]):
            one("dictionaries", "trained", store, method, site, main_step, seed)
    if random_model:
        control = _control_store(run, cfg, sites, steps, out)
        for at in sites:
            for model, st in (("trained", store), ("random-init", control)):
                for step in steps:
                    for seed in (seeds if step_seeds is None else step_seeds):
                        one("steps", model, st, "sae_pca", at, step, seed)
    for size in sizes:
        one("sizes", "trained", store, "sae_pca", site, main_step, 0, tuple(size))
    table = study_tables(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"rows": rows, "recipe": recipe, "site": site}, indent=1))
    (out / "study.md").write_text(table)
    return {"rows": rows, "table": table}


def _control_store(run: Path, cfg: dict, sites: list[str], steps, out: Path):
    """The random-model control: the demo's capture (same prompts, seeds, holdout) of a randomly initialised copy
    of the transformer, teacher-forced with the trained model's inputs, at `sites` (one store per site list)."""
    import difflens as dl

    model = dl.load_model(cfg["model"])
    folder = out / ("control_store-" + "-".join(s.replace(".", "_") for s in sites))
    return dl.capture(model, n_images=cfg["n_images"], sites=list(sites), steps=sorted(set(steps)), out=folder,
                      seed=cfg["seed"], holdout=cfg["holdout"], control="random-init", progress=False)


def fmt_cell(values, intervals=None, scale: float = 100.0, digits: int = 1) -> str:
    """One table cell over seeds: mean x `scale` [interval averaged over seeds] (seeds min-max); "-" if none."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return "-"
    f = lambda x: f"{scale * x:.{digits}f}"  # noqa: E731
    text = f(v.mean())
    ivs = [iv for iv in (intervals or []) if iv]
    if ivs:
        text += f" [{f(np.mean([i[0] for i in ivs]))}, {f(np.mean([i[1] for i in ivs]))}]"
    if v.size > 1:
        text += f" (seeds {f(v.min())}-{f(v.max())})"
    return text


def study_tables(rows: list[dict]) -> str:
    """Markdown, one table per part: measures in %, mean over seeds [95 % bootstrap interval, averaged over seeds]
    (the seeds' range)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # ITDA's size varies by seed: the latents are listed, not grouped on
        size = r["latents"] if r["part"] == "sizes" else None
        groups.setdefault((r["part"], r["model"], r["method"], r["site"], r["step"], size, r["k"]), []).append(r)
    head = ("| model | dictionary | site | step | latents | k | seeds | precise share | random directions | untrained | "
            "precise (coarse allowed) | AP >= 0.3 | F1 >= 0.5 | union F1 | absorption | probe ceiling F1 |\n|"
            + "---|" * 16 + "\n")
    out, part = [], None
    for (p, model, method, site, step, _, k), rs in groups.items():
        sizes = sorted({r["latents"] for r in rs})
        latents = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        if p != part:
            out.append(f"\n### {p}\n\n{head.rstrip()}")
            part = p
        col = lambda key: [r.get(key) for r in rs]  # noqa: E731
        out.append(f"| {model} | {method} | {site} | {step} | {latents} | {k} | {len(rs)} | "
                   f"{fmt_cell(col('dictionary.precise_share'), col('dictionary.precise_share.interval'))} | "
                   f"{fmt_cell(col('random.precise_share'), col('random.precise_share.interval'))} | "
                   f"{fmt_cell(col('init.precise_share'), col('init.precise_share.interval'))} | "
                   f"{fmt_cell(col('dictionary.precise_share_coarse'))} | {fmt_cell(col('dictionary.ap_share'))} | "
                   f"{fmt_cell(col('dictionary.f1_share'), col('dictionary.f1_share.interval'))} | "
                   f"{fmt_cell(col('dictionary.mean_union_f1'))} | {fmt_cell(col('dictionary.mean_absorption'))} | "
                   f"{fmt_cell(col('probe_ceiling'))} |")
    return "\n".join(out) + "\n"


@dataclass
class StudyConfig:
    """`difflens study truth` settings (see `run_study`)."""

    run: str = "runs/demo"
    """a demo run folder"""
    out: str | None = None
    """study folder (default: RUN/truth_study)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """training seeds"""
    steps: list[int] = field(default_factory=lambda: [0, 3, 7])
    """steps of the random-model comparison"""
    step_seeds: list[int] = field(default_factory=list)
    """seeds of the across-steps part (empty: --seeds)"""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """dictionaries of the comparison"""
    random_model: bool = True
    """include the random-model control"""
    sites: list[str] = field(default_factory=list)
    """sites of the across-steps part (empty: the demo's)"""
    sizes: list[str] = field(default_factory=lambda: [f"{n}:{k}" for n, k in SIZES])
    """latents:k of the size part"""


def study_from_config(cfg: StudyConfig) -> dict:
    """`run_study` with a config's settings."""
    sizes = []
    for size in cfg.sizes:
        latents, sep, k = size.partition(":")
        if not sep or not latents.isdigit() or not k.isdigit():
            raise ValueError(f"--sizes takes latents:k pairs such as 192:4, got {size!r}")
        sizes.append((int(latents), int(k)))
    return run_study(cfg.run, cfg.out, cfg.seeds, cfg.steps, cfg.methods, cfg.random_model, cfg.step_seeds or None,
                     cfg.sites or None, sizes)


