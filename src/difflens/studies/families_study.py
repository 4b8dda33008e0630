"""The SAE-family study: TopK, BatchTopK, Matryoshka and JumpReLU at equal width and mean L0, and one dictionary
across denoising steps against one per step, measured on the embedded world's ground truth.

    difflens study families --run runs/demo [--seeds 0,1,2] [--families topk,matryoshka] [--plain]
        [--steps 0,3,7] [--step-normalizations shared,per-step] [--step-seeds 0]

On a demo run (its store, site, step and recipe: `truth_study.open_run`, `sae_recipe`), two parts:

(a) **families** — each family of `families` × `seeds`, whitened (and plain with `--plain`), all at the demo's
    width and k (JumpReLU: k is its L0 target): held-out FVU in the residual and the input space, the mean L0
    actually reached and the dead share on held-out rows (`evaluate`), training wall time, and every ground-truth
    measure with its random-direction and untrained controls (`truth_report`). Splitting: the mean number of
    latents precise for one (specific) concept, over concepts with at least one; for Matryoshka also the precise
    share of each nested prefix (latents 0..size).
(b) **steps** — one whitened TopK SAE across `steps` per normalisation of `step_normalizations` (shared: one
    whitening for all steps; per-step: one per step) against a one-step whitened TopK SAE at each step, same width,
    k and token budget (the dictionary across steps spends it over all its steps): held-out FVU per step in both
    spaces (each dictionary's own input space) and the ground truth at each step.

Writes ``<out>/families.json`` (every row) and ``<out>/families.md`` (one table per part: mean over seeds
[bootstrap interval averaged over seeds] (the seeds' range); each row names the command that reproduces it).
Every stage resumes: finished dictionaries reload, finished evaluations and reports are read back.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difflens.dictionaries.train.config import sae_recipe
from difflens.reading import read_json
from difflens.store.run_layout import truth_path

from .truth_study import cached_report, fmt_cell, open_run, report_row

FAMILIES = ("topk", "batchtopk", "matryoshka", "jumprelu")
SPACES = {"whitened": "pca", "plain": "none"}  # input space -> normalization
STEP_NORMALIZATIONS = ("shared", "per-step")


@dataclass
class FamiliesConfig:
    """`difflens study families` settings (see the module docstring)."""

    run: str = "runs/demo"
    """a demo run folder"""
    out: str | None = None
    """study folder (default: RUN/families_study)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """training seeds of the families part"""
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    """SAE families compared (empty: skip the families part)"""
    plain: bool = False
    """also train every family on plain (unwhitened) inputs"""
    steps: list[int] = field(default_factory=lambda: [0, 3, 7])
    """denoising steps of the across-steps part (empty: skip it)"""
    step_normalizations: list[str] = field(default_factory=lambda: list(STEP_NORMALIZATIONS))
    """normalisations of the dictionary across steps: shared, per-step"""
    step_seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds of the across-steps part"""
    eval_tokens: int = 100_000
    """held-out rows of each FVU / L0 / dead-share evaluation"""


def run_families_study(cfg: FamiliesConfig, log=lambda m: print(m, flush=True)) -> dict:
    """Run (or resume) the study; returns {"rows": [...], "table": markdown} and writes families.json/.md."""
    from difflens.interpret.labels import token_labels

    unknown = sorted(set(cfg.families) - set(FAMILIES)) + sorted(set(cfg.step_normalizations) - set(STEP_NORMALIZATIONS))
    if unknown:
        raise ValueError(f"unknown families or step normalisations {unknown}: families are {', '.join(FAMILIES)}, "
                         f"normalisations {', '.join(STEP_NORMALIZATIONS)}")
    demo = open_run(cfg.run)
    out = Path(cfg.out) if cfg.out is not None else demo.folder / "families_study"
    labels = token_labels(demo.store)
    study = _Study(cfg, demo, out, labels)
    rows = []
    for space in ["whitened", "plain"] if cfg.plain else ["whitened"]:
        for family in cfg.families:
            for seed in cfg.seeds:
                rows.append(study.family_row(space, family, seed))
                log(json.dumps({k: rows[-1][k] for k in ("part", "space", "family", "seed", "fvu_residual", "l0",
                                                         "dictionary.precise_share")}))
    for seed in cfg.step_seeds if cfg.steps else ():
        for t in cfg.steps:
            rows.append(study.one_step_row(t, seed))
        for norm in cfg.step_normalizations:
            rows.extend(study.across_steps_rows(norm, seed))
        for r in rows[-len(cfg.steps) * (1 + len(cfg.step_normalizations)):]:
            log(json.dumps({k: r[k] for k in ("part", "dictionary", "step", "seed", "fvu_residual",
                                              "dictionary.precise_share")}))
    table = families_tables(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps({"rows": rows, "recipe": demo.recipe, "site": demo.site,
                                                   "step": demo.step, "config": vars(cfg)}, indent=1))
    (out / "families.md").write_text(table)
    return {"rows": rows, "table": table}


class _Study:
    """One study's trainings, evaluations and reports at fixed (run, out, labels): folders, caches, rows."""

    def __init__(self, cfg: FamiliesConfig, demo, out: Path, labels):
        self.cfg, self.demo, self.out, self.labels = cfg, demo, out, labels
        r = demo.recipe
        self.recipe = sae_recipe(r["k"], r["num_latents"], r["sae_tokens"])

    def _train(self, folder: Path, step, seed: int, arch: str = "topk", normalization: str = "pca", **extra):
        import difflens as dl

        return dl.train_sae(self.demo.store, self.demo.site, step, out=folder, seed=seed, arch=arch,
                            normalization=normalization, **self.recipe, **extra)

    def _evaluate(self, dictionary, folder: Path, step: int) -> dict:
        """Held-out FVU (both spaces), L0 and dead share at `step`, read back from the folder when done."""
        import difflens as dl

        path = folder / f"eval_step{step}.json"
        if not path.exists():
            ev = dl.evaluate(dictionary, self.demo.store, site=self.demo.site, step=step, max_tokens=self.cfg.eval_tokens)
            path.write_text(json.dumps(ev))
        ev = read_json(path, "held-out evaluation", expect=dict)
        return {k: ev[k] for k in ("split", "fvu_residual", "fvu_input_space", "l0", "dead_fraction")}

    def _row(self, sae, folder: Path, step: int, report_path: Path, prefix_sizes=None, **keys) -> dict:
        """`keys`, the report's measures, the evaluation at `step`, training time and splitting (and, given a
        Matryoshka's `prefix_sizes`, the precise share of each prefix)."""
        report = cached_report(sae, report_path, self.labels, step=step)
        row = report_row(report, **keys, step=step, latents=report["num_latents"], k=report["k"])
        row.update(self._evaluate(sae, folder, step), train_seconds=sae.meta.get("seconds"),
                   **splitting(report))
        if prefix_sizes:
            row["prefixes"] = prefix_shares(report, prefix_sizes)
        return row

    def family_row(self, space: str, family: str, seed: int) -> dict:
        step = self.demo.step
        folder = self.out / space / family / f"step{step}" / f"seed{seed}"
        d = self._train(folder, step, seed, arch=family, normalization=SPACES[space])
        row = self._row(d, folder, step, truth_path(folder), d.prefix_sizes if family == "matryoshka" else None,
                        part="families", space=space, family=family, seed=seed)
        row["command"] = self.command(families=[family], seeds=self.cfg.seeds, plain=space == "plain", steps=[])
        return row

    def one_step_row(self, step: int, seed: int) -> dict:
        """The whitened TopK SAE of `step` (at the demo's step: the families part's)."""
        folder = self.out / "whitened" / "topk" / f"step{step}" / f"seed{seed}"
        d = self._train(folder, step, seed)
        row = self._row(d, folder, step, truth_path(folder), part="steps", dictionary="one step",
                        normalization="-", trained_steps=[step], seed=seed)
        row["command"] = self.command(families=[], steps=self.cfg.steps, step_seeds=self.cfg.step_seeds,
                                      step_normalizations=self.cfg.step_normalizations)
        return row

    def across_steps_rows(self, norm: str, seed: int) -> list[dict]:
        """The whitened TopK SAE across `steps` (normalisation `norm`), one row per step."""
        steps = list(self.cfg.steps)
        folder = self.out / "whitened" / "topk" / f"steps{'-'.join(map(str, steps))}-{norm}" / f"seed{seed}"
        d = self._train(folder, steps, seed, step_normalization=norm)
        command = self.command(families=[], steps=steps, step_seeds=self.cfg.step_seeds, step_normalizations=[norm])
        return [{**self._row(d, folder, t, folder / f"truth_step{t}.json", part="steps", dictionary="across steps",
                             normalization=norm, trained_steps=steps, seed=seed), "command": command} for t in steps]

    def command(self, **flags) -> str:
        """The `difflens study families` line that trains and reports this row with its sibling seeds (and reads
        back what is done)."""
        parts = ["difflens study families", "--run", shlex.quote(str(self.cfg.run))]
        if self.cfg.out is not None:
            parts += ["--out", shlex.quote(str(self.cfg.out))]
        for name, value in flags.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                parts += [flag] if value else []
            else:
                parts += [flag, shlex.quote(",".join(map(str, value)))]
        if self.cfg.eval_tokens != FamiliesConfig.eval_tokens:
            parts += ["--eval-tokens", str(self.cfg.eval_tokens)]
        return " ".join(parts)


def splitting(report: dict) -> dict:
    """How the dictionary splits concepts: over the specific concepts with at least one latent precise for them,
    the mean number of such latents ("precise_latents_per_concept") and the share with two or more
    ("split_concepts_share"); None when no concept has one."""
    coarse = set(report.get("concepts_coarse", ()))
    counts = np.array([u["latents"] for c, u in report["union_coverage"].items() if c not in coarse and u["latents"]])
    return {"precise_latents_per_concept": float(counts.mean()) if counts.size else None,
            "split_concepts_share": float((counts >= 2).mean()) if counts.size else None}


def prefix_shares(report: dict, prefix_sizes: list[int]) -> list[dict]:
    """A Matryoshka dictionary's precise share within each nested prefix (latents 0..size - 1, alive ones)."""
    out = []
    for size in prefix_sizes:
        alive = [r for r in report["latents"] if r["latent"] < size]
        out.append({"latents": int(size), "alive": len(alive),
                    "precise_share": sum(r["precise"] for r in alive) / len(alive) if alive else None})
    return out


def _groups(rows: list[dict], part: str, keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["part"] == part:
            groups.setdefault(tuple(str(r[k]) for k in keys), []).append(r)
    return groups


def _prefix_cell(rs: list[dict]) -> str:
    if not rs[0].get("prefixes"):
        return "-"
    return ", ".join(f"{p['latents']}: {fmt_cell([r['prefixes'][i]['precise_share'] for r in rs])}"
                     for i, p in enumerate(rs[0]["prefixes"]))


def families_tables(rows: list[dict]) -> str:
    """Markdown: the families table and the steps table (shares in %, FVU as a fraction; mean over seeds
    [95 % bootstrap interval, averaged over seeds] (the seeds' range))."""
    col = lambda rs, key: [r.get(key) for r in rs]  # noqa: E731
    share = lambda rs, m, control="dictionary": fmt_cell(col(rs, f"{control}.{m}"),  # noqa: E731
                                                         col(rs, f"{control}.{m}.interval"))
    num = lambda rs, key, digits=3: fmt_cell(col(rs, key), scale=1.0, digits=digits)  # noqa: E731
    out = []
    families = _groups(rows, "families", ("space", "family", "latents", "k"))
    if families:
        out.append("### families\n\n| space | family | latents | k | seeds | FVU residual | FVU input space | L0 "
                   "(held-out) | dead % | train s | precise share | random directions | untrained | precise (coarse "
                   "allowed) | AP >= 0.3 | F1 >= 0.5 | union F1 | absorption | precise latents per concept | "
                   "concepts split % | precise share by prefix | command |\n|" + "---|" * 22)
        for (space, family, latents, k), rs in families.items():
            out.append(f"| {space} | {family} | {latents} | {k} | {len(rs)} | {num(rs, 'fvu_residual')} | "
                       f"{num(rs, 'fvu_input_space')} | {num(rs, 'l0', 1)} | {fmt_cell(col(rs, 'dead_fraction'))} | "
                       f"{num(rs, 'train_seconds', 0)} | {share(rs, 'precise_share')} | "
                       f"{share(rs, 'precise_share', 'random')} | {share(rs, 'precise_share', 'init')} | "
                       f"{share(rs, 'precise_share_coarse')} | {share(rs, 'ap_share')} | {share(rs, 'f1_share')} | "
                       f"{share(rs, 'mean_union_f1')} | {share(rs, 'mean_absorption')} | "
                       f"{num(rs, 'precise_latents_per_concept', 2)} | {fmt_cell(col(rs, 'split_concepts_share'))} | "
                       f"{_prefix_cell(rs)} | `{rs[0]['command']}` |")
    steps = _groups(rows, "steps", ("dictionary", "normalization", "trained_steps", "step", "latents", "k"))
    if steps:
        out.append("\n### steps\n\n| dictionary | normalisation | trained steps | step | latents | k | seeds | "
                   "FVU residual | FVU input space | L0 (held-out) | precise share | random directions | untrained | "
                   "F1 >= 0.5 | union F1 | absorption | command |\n|" + "---|" * 17)
        order = sorted(steps.items(), key=lambda kv: (int(kv[0][3]), kv[0][0] != "one step", kv[0][1]))
        for (dictionary, norm, trained, step, latents, k), rs in order:
            trained = ",".join(map(str, rs[0]["trained_steps"]))
            out.append(f"| {dictionary} | {norm} | {trained} | {step} | {latents} | {k} | {len(rs)} | "
                       f"{num(rs, 'fvu_residual')} | {num(rs, 'fvu_input_space')} | {num(rs, 'l0', 1)} | "
                       f"{share(rs, 'precise_share')} | {share(rs, 'precise_share', 'random')} | "
                       f"{share(rs, 'precise_share', 'init')} | {share(rs, 'f1_share')} | "
                       f"{share(rs, 'mean_union_f1')} | {share(rs, 'mean_absorption')} | `{rs[0]['command']}` |")
    return "\n".join(out) + "\n"
