"""The ground-truth study: which dictionaries carry the world's concepts, where, and above which controls.

    python -m difflens.interpret.study --run runs/demo [--seeds 0,1,2] [--steps 0,3,7] [--step-seeds 0]
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

import argparse
import json
from pathlib import Path

import numpy as np

from difflens.store.run_layout import store_folder, summary_path, truth_path

METHODS = ("sae_pca", "sae_none", "sae_pca_residual_loss", "itda", "neurons")
SAE_VARIANTS = {"sae_pca": dict(normalization="pca"), "sae_none": dict(normalization="none"),
                "sae_pca_residual_loss": dict(normalization="pca", loss_space="residual")}
SIZES = ((192, 4), (384, 8), (768, 16), (1536, 32))  # (latents, k) of the size part
MEASURES = ("precise_share", "precise_share_coarse", "ap_share", "f1_share", "mean_union_f1", "mean_absorption")


def sae_recipe(k: int, num_latents: int, num_tokens: int) -> dict:
    """`train_sae` settings shared by every ground-truth experiment (the study, `truth_scan`, `extra_concepts`), so
    dictionaries are compared at one fixed recipe: batch 4096, Adam lr 1e-3, AuxK with k_aux = 2k, a dead window of
    a quarter of the tokens (at most 500k), the normaliser fitted on the whole train split."""
    return dict(k=k, num_latents=num_latents, num_tokens=num_tokens, batch_size=4096, lr=1e-3, k_aux=2 * k,
                dead_window_tokens=min(num_tokens // 4, 500_000), norm_fit_tokens=10**9)


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


def _report(dictionary, folder: Path, labels) -> dict:
    from .truth import truth_report, write_truth

    path = truth_path(folder)
    if path.exists():
        return json.loads(path.read_text())
    report = truth_report(dictionary, labels=labels, sparse_sizes=())
    write_truth(report, path)
    return json.loads(path.read_text())


def _row(report: dict, **keys) -> dict:
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
    import difflens as dl

    from .labels import token_labels

    run = Path(run)
    summary = json.loads(summary_path(run).read_text())
    cfg, site, main_step = summary["config"], summary["site"], int(summary["step"])
    store = dl.open_store(store_folder(run))
    width = store.reader(site, main_step, "train").dim
    recipe = {"k": cfg["k"], "num_latents": cfg["expansion_factor"] * width, "sae_tokens": cfg["sae_tokens"],
              "itda_tokens": cfg["itda_tokens"], "itda_threshold": cfg["itda_threshold"]}
    out = Path(out) if out is not None else run / "truth_study"
    labels = token_labels(store)
    sites = list(sites or [site])
    rows = []

    def one(part: str, model: str, st, method: str, at: str, step: int, seed: int, size: tuple | None = None):
        shape = dict(recipe, **({"num_latents": size[0], "k": size[1]} if size else {}))
        name = method + (f"_{size[0]}k{size[1]}" if size else "")
        folder = out / model / at / f"step{step}" / name / f"seed{seed}"
        report = _report(_train(method, st, at, step, seed, folder, shape), folder, labels)
        rows.append(_row(report, part=part, model=model, method=method, site=at, step=step, seed=seed,
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


def _fmt(values, intervals=None) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return "-"
    text = f"{100 * v.mean():.1f}"
    ivs = [iv for iv in (intervals or []) if iv]
    if ivs:
        text += f" [{100 * np.mean([i[0] for i in ivs]):.1f}, {100 * np.mean([i[1] for i in ivs]):.1f}]"
    if v.size > 1:
        text += f" (seeds {100 * v.min():.1f}-{100 * v.max():.1f})"
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
                   f"{_fmt(col('dictionary.precise_share'), col('dictionary.precise_share.interval'))} | "
                   f"{_fmt(col('random.precise_share'), col('random.precise_share.interval'))} | "
                   f"{_fmt(col('init.precise_share'), col('init.precise_share.interval'))} | "
                   f"{_fmt(col('dictionary.precise_share_coarse'))} | {_fmt(col('dictionary.ap_share'))} | "
                   f"{_fmt(col('dictionary.f1_share'), col('dictionary.f1_share.interval'))} | "
                   f"{_fmt(col('dictionary.mean_union_f1'))} | {_fmt(col('dictionary.mean_absorption'))} | "
                   f"{_fmt(col('probe_ceiling'))} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a demo run folder")
    p.add_argument("--out", default=None, help="study folder (default: RUN/truth_study)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, e.g. 0,1,2")
    p.add_argument("--steps", default="0,3,7", help="steps of the random-model comparison")
    p.add_argument("--step-seeds", default=None, help="seeds of the across-steps part (default: --seeds)")
    p.add_argument("--methods", default=",".join(METHODS), help="dictionaries of the comparison")
    p.add_argument("--no-random-model", action="store_true", help="skip the random-model control")
    p.add_argument("--sites", default=None, help="sites of the across-steps part (default: the demo's)")
    p.add_argument("--sizes", default=",".join(f"{n}:{k}" for n, k in SIZES), help="latents:k of the size part")
    a = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    result = run_study(a.run, a.out, ints(a.seeds), ints(a.steps), [m for m in a.methods.split(",") if m],
                       not a.no_random_model, ints(a.step_seeds) if a.step_seeds else None,
                       a.sites.split(",") if a.sites else None,
                       [tuple(int(v) for v in x.split(":")) for x in a.sizes.split(",") if x])
    print(result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
