"""`difflens demo`: the main job end to end on an embedded model (default: embedded-rich), in minutes on a CPU,
through the Python API.

capture residual streams (20 % of the images held out) -> on the main site train TopK SAEs with plain inputs,
whitened inputs (whitened loss) and whitened inputs (residual loss), an ITDA dictionary and the MLP-neuron
baseline, all at the same k, size and token budget -> evaluate on the held-out images in both FVU spaces ->
does the whitened SAE transfer to other denoising steps and to the other block? -> residual norms, PCA
spectrum, and a k/size sweep whose SAEs get the main run's token budget -> `summary.json`, `metrics.txt`, plots.
Every stage resumes or is skipped when its output exists.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from difflens.configs import add_config_arguments, config_from_args
from difflens.reading import read_json
from difflens.store import run_layout
from difflens.store.layout import CAPTURE_CONFIG


@dataclass
class DemoConfig:
    """`difflens demo` settings."""

    out: str = "runs/demo"
    """run folder"""
    model: str = "embedded-rich"
    """model to capture from (the rich shapes world; `embedded` is the classic one)"""
    n_images: int = 240
    """images to generate (256 image tokens each per site and step)"""
    holdout: float = 0.2
    """fraction of the images held out for evaluation"""
    steps_to_record: list[int] = field(default_factory=lambda: [0, 3, 7])
    """denoising steps to record"""
    site: str | None = None
    """main site (default: the model's: last double block, image stream)"""
    site_step: int = 7
    """denoising step the dictionaries are trained at (the ground-truth scan's best on embedded-rich)"""
    early_step: int | None = 3
    """a second whitened SAE at this step (None: none): at the main step the noisy latent is nearly the finished
    image and an SAE on a randomly initialised copy of the model is almost as precise (the ground-truth study); at
    an early step the concepts are the model's own"""
    expansion_factor: int = 8
    """dictionary latents per input dimension"""
    k: int = 16
    """active latents per token (SAE and ITDA)"""
    sae_tokens: int = 1_500_000
    """training tokens of every SAE, sweep SAEs included"""
    itda_tokens: int = 200_000
    """tokens streamed through ITDA"""
    itda_threshold: float = 0.3
    """ITDA's per-token loss threshold"""
    sweep_ks: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """k values of the sweep"""
    sweep_expansions: list[int] = field(default_factory=lambda: [2, 8])
    """sweep sizes, as multiples of the width"""
    eval_tokens: int = 12_288
    """held-out evaluation tokens"""
    autointerp_latents: int = 64
    """latents per dictionary explained and scored by the oracle autointerp"""
    truth_sparse_sizes: list[int] = field(default_factory=list)
    """sparse-probe sizes of each ground-truth report (none by default: no demo table reads them and they cost
    1-2 minutes per dictionary; `difflens features truth` runs 1, 4, 16)"""
    card_latents: int = 8
    """latents of the sae_pca feature-card grid"""
    steer_dictionary: str = "sae_none"
    """dictionary of the steering showcase"""
    steer_strengths: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    """strengths of the steering showcase, in multiples of each latent's typical activation"""
    steer_images: int = 16
    """images per steered latent (the oracle scores each)"""
    edit_categories: list[str] = field(default_factory=lambda: ["color", "shape", "size", "background"])
    """categories of the demo's editing benchmark"""
    edit_pairs: int = 20
    """prompt pairs per category of the editing benchmark"""
    seed: int = 0
    """seed of the prompts, images and training"""
    device: str = "cpu"
    """training device"""
    quiet: bool = False
    """no progress bars"""

    def __post_init__(self):
        """Refuse settings the demo would only trip over minutes in, after the capture."""
        recorded = [int(s) for s in self.steps_to_record]
        for name in ("site_step", "early_step"):
            if getattr(self, name) is not None and getattr(self, name) not in recorded:
                raise ValueError(f"{name} {getattr(self, name)} is not among steps_to_record {recorded}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1): the demo evaluates on held-out images, got {self.holdout}")
        interpreted = ["sae_pca", "sae_none", "itda", "neurons"] + (
            [] if self.early_step in (None, self.site_step) else [f"sae_pca_step{self.early_step}"])
        if self.steer_dictionary not in interpreted:
            raise ValueError(f"steer_dictionary {self.steer_dictionary!r} is not one the demo interprets: {interpreted}")


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage into ``cfg.out``; returns the summary (also written to summary.json)."""
    import difflens as dl

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timed = _Timer()
    _check_previous_run(out, cfg)
    model = dl.load_model(cfg.model)
    sites = _Sites.of(model, cfg)
    store = timed("capture", lambda: _capture(model, sites, out, cfg))
    common = _sae_settings(cfg, sites.size)
    dictionaries = _train_dictionaries(store, sites, common, out, cfg, timed)
    evaluation = _evaluate(dictionaries, cfg)
    transfer = _across_steps(dictionaries["sae_pca"], store, model, sites, out, cfg)
    report, sweep_table = _analyses(store, sites, common, out, cfg, timed)
    report["across_steps"] = transfer["rows"]
    interpretation = timed("interpret", lambda: interpret(dictionaries, out, cfg))
    steering = timed("steer", lambda: steer_showcase(model, dictionaries, out, cfg))
    steering["edit_bench"] = timed("edit_bench", lambda: edit_bench(model, dictionaries, out, cfg))
    return _write_summary(out, cfg, sites.main, evaluation, transfer["table"], report, sweep_table, interpretation,
                          steering, timed.timings)


class _Timer:
    """``timed(name, fn)`` runs fn and records its wall time in seconds under name (summary.json's timings_s)."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn):
        start = time.time()
        result = fn()
        self.timings[name] = round(time.time() - start, 1)
        return result


@dataclass
class _Sites:
    """The sites the demo captures and trains on."""

    main: str  # the dictionaries' site
    mlp: str  # the MLP output of the main site's block (the neuron baseline)
    residual: list[str]  # every block's image- and text-stream output
    width: int  # of the main site
    size: int  # latents of the main dictionaries

    @classmethod
    def of(cls, model, cfg: DemoConfig) -> "_Sites":
        site = cfg.site or model.default_sites[0]
        residual = [s.name for s in model.sites() if s.name.endswith(".img.out") or s.name.endswith(".txt.out")]
        width = model.site(site).dim
        return cls(site, site.rsplit(".", 1)[0] + ".mlp", residual, width, cfg.expansion_factor * width)


def _capture(model, sites: _Sites, out: Path, cfg: DemoConfig):
    """The store: every residual site and the main block's MLP at the recorded steps, some images held out."""
    import difflens as dl

    residual_sites, mlp_site = sites.residual, sites.mlp
    _say(f"capturing {len(residual_sites) + 1} sites x steps {cfg.steps_to_record} from {cfg.n_images} images "
         f"({cfg.holdout:.0%} held out) -> {run_layout.store_folder(out)}")
    return dl.capture(model, n_images=cfg.n_images, sites=residual_sites + [mlp_site],
                      steps=list(cfg.steps_to_record), out=run_layout.store_folder(out), seed=cfg.seed,
                      holdout=cfg.holdout, progress=not cfg.quiet)


def _sae_settings(cfg: DemoConfig, size: int) -> dict:
    """Training settings every SAE of the demo shares (the sweep's included)."""
    from .dictionaries.train.config import sae_recipe

    return dict(sae_recipe(cfg.k, size, cfg.sae_tokens), seed=cfg.seed, device=cfg.device, progress=not cfg.quiet)


def _train_dictionaries(store, sites: _Sites, common: dict, out: Path, cfg: DemoConfig, timed: _Timer) -> dict:
    """On the main site: TopK SAEs with plain inputs, whitened inputs (whitened and residual loss), a whitened one
    at the early step, ITDA, and the MLP-neuron baseline, all at the same k."""
    import difflens as dl

    site, size = sites.main, sites.size
    variants = {"sae_pca": dict(normalization="pca"),
                "sae_pca_residual_loss": dict(normalization="pca", loss_space="residual"),
                "sae_none": dict(normalization="none")}
    dictionaries = {}
    for name, extra in variants.items():
        _say(f"training TopK SAE {name} ({size} latents, k {cfg.k}, {cfg.sae_tokens:,} tokens) on {site} "
             f"step {cfg.site_step}")
        dictionaries[name] = timed(f"train_{name}", lambda: dl.train_sae(
            store, site, cfg.site_step, out=run_layout.dictionary_folder(out, name), **common, **extra))
    if cfg.early_step is not None and cfg.early_step != cfg.site_step:
        name = f"sae_pca_step{cfg.early_step}"
        _say(f"training TopK SAE {name} ({size} latents, k {cfg.k}) on {site} step {cfg.early_step}, where the "
             f"concepts are the model's own rather than its input's")
        dictionaries[name] = timed(f"train_{name}", lambda: dl.train_sae(
            store, site, cfg.early_step, out=run_layout.dictionary_folder(out, name), **common, normalization="pca"))
    _say(f"training ITDA (threshold {cfg.itda_threshold}, k {cfg.k}) on {site}")
    dictionaries["itda"] = timed("train_itda", lambda: dl.train_itda(
        store, site, cfg.site_step, out=run_layout.dictionary_folder(out, "itda"), k=cfg.k, threshold=cfg.itda_threshold,
        max_atoms=4 * size, num_tokens=cfg.itda_tokens, seed=cfg.seed, norm_fit_tokens=10**9,
        progress=not cfg.quiet))
    dictionaries["neurons"] = dl.neuron_baseline(store, sites.mlp, cfg.site_step, k=cfg.k,
                                                 out=run_layout.dictionary_folder(out, "neurons"))
    return dictionaries


def _evaluate(dictionaries: dict, cfg: DemoConfig) -> dict:
    """Every dictionary on the held-out images: {"rows", "table"} (printed)."""
    import difflens as dl

    from .evaluation.metrics import TABLE, format_table

    _say("evaluating on the held-out images")
    rows = [{"dictionary": name, **dl.evaluate(d, max_tokens=cfg.eval_tokens, device=cfg.device)}
            for name, d in dictionaries.items()]
    table = format_table(rows, ["dictionary", *TABLE])
    print(table)
    return {"rows": rows, "table": table}


def _across_steps(sae_pca, store, model, sites: _Sites, out: Path, cfg: DemoConfig) -> dict:
    """Does the whitened SAE transfer to the other recorded steps and to the other blocks of its width?
    {"rows", "table"} (printed)."""
    from .evaluation import analyses
    from .evaluation.metrics import format_table

    site, width = sites.main, sites.width
    other_blocks = [s for s in sites.residual if s.endswith(".img.out") and s != site and model.site(s).dim == width]
    _say(f"does sae_pca (trained at step {cfg.site_step}) transfer to steps {cfg.steps_to_record} and to {other_blocks}?")
    steps_rows = analyses.across_steps(sae_pca, store, sites=other_blocks,
                                       max_tokens=cfg.eval_tokens, out_dir=run_layout.plots_folder(out))
    steps_table = format_table(steps_rows, ["site", "step", "split", "fvu_residual", "fvu_input_space", "l0",
                                            "dead_fraction"])
    print(steps_table)
    return {"rows": steps_rows, "table": steps_table}


def _analyses(store, sites: _Sites, common: dict, out: Path, cfg: DemoConfig, timed: _Timer) -> tuple[dict, str]:
    """(residual norms, PCA spectrum and the k/size sweep at the main run's token budget; the sweep's table,
    printed)."""
    from .dictionaries.train import RunConfig, SAETrainConfig
    from .evaluation import analyses
    from .evaluation.metrics import format_table

    site, width = sites.main, sites.width
    _say("analyses: residual norms by layer x step, PCA spectrum, k/size sweep at the same token budget")
    plots_dir = run_layout.plots_folder(out)
    reader = store.reader(site, cfg.site_step, split="train")
    report = {
        "residual_norms": analyses.residual_norms(store, max_tokens=4096, out_dir=plots_dir),
        "pca_spectrum": analyses.pca_spectrum(reader, site, max_tokens=reader.num_rows, out_dir=plots_dir),
    }
    sweep_cfg = SAETrainConfig(**{k: v for k, v in common.items() if k in SAETrainConfig.__dataclass_fields__})
    sweep_rows = timed("sweep", lambda: analyses.sweep_k_size(
        store, list(cfg.sweep_ks), [e * width for e in cfg.sweep_expansions], sweep_cfg, out / run_layout.SWEEP_DIR,
        site=site, step=cfg.site_step, eval_tokens=cfg.eval_tokens,
        run=RunConfig(progress=False, checkpoint_every=0, norm_fit_tokens=10**9, device=cfg.device)))
    report["sweep"] = sweep_rows
    sweep_table = format_table(sweep_rows, ["num_latents", "k", "fvu_input_space", "fvu_residual", "dead_fraction"])
    print(sweep_table)
    return report, sweep_table


def _write_summary(out: Path, cfg: DemoConfig, site: str, evaluation: dict, steps_table: str, report: dict,
                   sweep_table: str, interpretation: dict, steering: dict, timings: dict) -> dict:
    """summary.json and metrics.txt (the printed tables), then where to look next."""
    plots_dir = run_layout.plots_folder(out)
    table = evaluation["table"]
    summary = {
        "config": asdict(cfg),
        "site": site,
        "step": cfg.site_step,
        "fvu_definition": "sum |x - x_hat|^2 / sum |x - mean(x)|^2 over held-out tokens (per-dimension mean); "
                          "fvu_residual: in the captured activations' space; fvu_input_space: in the dictionary's "
                          "normalised input space",
        "metrics": evaluation["rows"],
        "analyses": report,
        "interpretation": interpretation,
        "steering": steering,
        "timings_s": timings,
        "plots": sorted(run_layout.relative_link(p, out) for folder in (plots_dir, out / run_layout.SWEEP_DIR)
                        for p in folder.glob("*.png")),
    }
    run_layout.summary_path(out).write_text(json.dumps(summary, indent=2))
    (out / run_layout.METRICS_TABLE).write_text(f"held-out evaluation\n{table}\n\nacross steps and blocks (sae_pca)\n"
                                     f"{steps_table}\n\nk/size sweep ({cfg.sae_tokens:,} tokens each)\n{sweep_table}\n"
                                     f"\ninterpretation (ground truth: {interpretation['headline_definition']})\n"
                                     f"{interpretation['table']}\n"
                                     f"\nsteering: oracle reads the concept / clean edit\n{steering['table']}\n"
                                     f"\nediting benchmark\n{steering['edit_bench']['table']}\n")
    _say(f"done: {run_layout.summary_path(out)}, tables {out / run_layout.METRICS_TABLE}, plots in {plots_dir} and "
         f"{out / run_layout.SWEEP_DIR}")
    exe = sys.argv[0] if Path(sys.argv[0]).name == "difflens" else "difflens"
    _say(f"explore the features in your web browser: {exe} browse {out}   (then open http://127.0.0.1:8000/)")
    return summary


def _check_previous_run(out: Path, cfg: DemoConfig) -> None:
    """A run folder holds one model's demo: say so plainly, not deep inside the capture's settings check."""
    capture = run_layout.store_folder(out) / CAPTURE_CONFIG
    previous = read_json(capture, "capture config", expect=dict).get("model") if capture.exists() else None
    if previous and previous != cfg.model:
        raise ValueError(f"{out} holds a demo of model {previous!r}, not of {cfg.model!r} (the demo's default model "
                         f"is embedded-rich since the rich world landed): remove {out} or pass --out DIR")


def interpret(dictionaries: dict, out: Path, cfg: DemoConfig) -> dict:
    """Feature index per dictionary (at its training step), a card grid, oracle autointerp per method, and the
    ground-truth match of every latent beside a random floor."""
    import difflens as dl

    from .evaluation.metrics import format_table
    from .interpret.autointerp import agreement, choose_latents, compare_methods
    from .interpret.cards import feature_grid
    from .interpret.truth import HEADLINE_DEFINITION, random_floor, truth_report, write_truth

    rows, summaries = [], {}
    for name, dictionary in dictionaries.items():
        if name == "sae_pca_residual_loss":
            continue
        folder = run_layout.dictionary_folder(out, name)
        _say(f"interpreting {name}: feature index, oracle autointerp on {cfg.autointerp_latents} latents, ground truth")
        # at the step the dictionary was trained at: pooled over every recorded step, the top images came from
        # step 0 (86 % of them on embedded-rich), where a step-7 dictionary does not even reconstruct (FVU 2.0)
        index = dl.feature_index(dictionary, out=run_layout.index_folder(folder), seed=cfg.seed)
        summary = dl.autointerp(index, features=str(cfg.autointerp_latents), seed=cfg.seed)
        summaries[name] = summary
        truth = truth_report(dictionary, sparse_sizes=tuple(cfg.truth_sparse_sizes), autointerp=summary, index=index,
                             random_seed=cfg.seed)
        write_truth(truth, run_layout.truth_path(folder))
        agree = agreement(summary, truth)
        head, controls = truth["headline"], truth["summary"]
        rows.append({"dictionary": name, "alive": int(index.alive().sum()), "latents": index.num_latents,
                     "precise_share": _with_interval(head["value"], head["interval"]),
                     "precise_random": _with_interval(head.get("random"), head.get("random_interval")),
                     "precise_untrained": _with_interval(head.get("init"), head.get("init_interval")),
                     "union_f1": controls["dictionary"]["mean_union_f1"],
                     "autointerp_mean": summary["mean_score"],
                     "perfect_judge": (truth.get("detection") or {}).get("mean_token"),
                     "f1_share": truth["explained_share"], "f1_share_random": truth["explained_share_random"],
                     "score_vs_precision_spearman": agree["spearman_precision"],
                     "score_vs_f1_spearman": agree["spearman"], "names_truth_concept": agree["named_share"]})
        if name == "sae_pca":  # the same latents in both styles: blue paint, and true colours where they fire
            latents = choose_latents(index, str(cfg.card_latents), cfg.seed)
            feature_grid(index, latents, run_layout.plots_folder(out) / "cards_sae_pca.png")
            feature_grid(index, latents, run_layout.plots_folder(out) / "cards_sae_pca_spotlight.png",
                         style="spotlight")
    # the floor of the autointerp histogram: random directions in sae_pca's whitened input space, indexed and
    # explained exactly as the dictionaries are
    floor = random_floor(dictionaries["sae_pca"], seed=cfg.seed)
    floor_index = dl.feature_index(floor, seed=cfg.seed)
    summaries["random directions"] = dl.autointerp(floor_index, out=run_layout.dictionary_folder(out, "sae_pca") / run_layout.RANDOM_FLOOR_DIR,
                                                   features=str(cfg.autointerp_latents), seed=cfg.seed)
    rows.append({"dictionary": "random directions", "latents": floor.num_latents,
                 "alive": int(floor_index.alive().sum()),
                 "autointerp_mean": summaries["random directions"]["mean_score"]})
    compare_methods(summaries, run_layout.plots_folder(out) / "autointerp_oracle.png")
    table = format_table(rows, ["dictionary", "latents", "alive", "precise_share", "precise_random",
                                "precise_untrained", "union_f1", "autointerp_mean", "perfect_judge", "f1_share",
                                "f1_share_random", "score_vs_precision_spearman", "score_vs_f1_spearman",
                                "names_truth_concept"])
    print(f"ground truth: {HEADLINE_DEFINITION} [95 % bootstrap interval over held-out images]; random: random "
          f"directions, untrained: the SAE before training; f1_share (recall-sensitive): best concept's F1 >= 0.5")
    print(table)
    return {"rows": rows, "table": table, "headline_definition": HEADLINE_DEFINITION}


def _with_interval(value, interval) -> str | None:
    """'18.0 % [15.1, 21.0]' (percentages), or None when there is no value."""
    if value is None:
        return None
    return f"{100 * value:.1f} %" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


# (concept family, attribute the oracle reads, steering region): a colour latent is steered onto an object of
# another colour, a shape latent onto an object of another shape, a background latent outside the objects
STEER_FAMILIES = (("color", "color", "object:0"), ("shape", "shape", "object:0"), ("bg", "background", "background"))


STEER_WINDOWS = {"first half": (0.0, 0.5), "second half": (0.5, 1.0), "all steps": None}


def steer_showcase(model, dictionaries: dict, out: Path, cfg: DemoConfig) -> dict:
    """For one latent per concept family (the best ground-truth match of ``cfg.steer_dictionary``), add it to
    images that lack the concept, at several strengths and over three step windows (the FLUX paper steered the
    first steps): a grid PNG per family, and the share of images where the oracle then reads the concept."""
    import numpy as np

    import difflens as dl

    from .evaluation.metrics import format_table
    from .evaluation.plots import plot_image_grid
    from .world import world_prompts

    name = cfg.steer_dictionary
    dictionary = dictionaries[name]
    truth = read_json(run_layout.truth_path(run_layout.dictionary_folder(out, name)), "ground-truth report",
                      hint="rerun `difflens demo`", expect=dict)
    strengths = list(cfg.steer_strengths)
    columns = [f"+{s:g}" for s in strengths]
    prompts_pool = world_prompts(200, seed=cfg.seed + 7, world=model.world)
    rows, grids = [], []
    for family, attribute, region in STEER_FAMILIES:
        # one attribute's value only: bg:pink&dotted (rich world) names two
        matches = [r for r in truth["latents"] if r["concept"].startswith(family + ":") and "&" not in r["concept"]]
        if not matches:
            continue
        best = max(matches, key=lambda r: r["f1"])
        value = best["concept"].split(":", 1)[1]

        def has(reading: dict) -> bool:
            if attribute == "background":
                return reading["background"] == value
            return bool(reading["objects"]) and reading["objects"][0][attribute] == value

        def rest(reading: dict) -> tuple:
            """Everything the oracle reads except the steered attribute."""
            objects = [dict(o) for o in reading["objects"]]
            if attribute != "background" and objects:
                objects[0].pop(attribute)
            return (None if attribute == "background" else reading["background"], reading.get("texture"),
                    tuple(tuple(sorted(o.items())) for o in objects))

        prompts = [p for p in prompts_pool if value not in p.split()][: cfg.steer_images]
        _say(f"steering {name} latent {best['latent']} ({best['concept']}, F1 {best['f1']:.2f}) at strengths "
             f"{strengths} x typical activation on {len(prompts)} images without it")
        for window, steps in STEER_WINDOWS.items():
            edits = [dl.Edit(best["latent"], "add", s, region=region, steps=steps) for s in strengths]
            result = dl.steer(model, dictionary, edits, prompts, seeds=cfg.seed)
            base = result.readings["baseline"]
            cells = {}
            for column, batch in zip(columns, result.readings["steered"]):
                reached = [has(r) for r in batch]
                clean = [ok and rest(r) == rest(b) for ok, r, b in zip(reached, batch, base)]
                cells[column] = f"{np.mean(reached):.2f} / {np.mean(clean):.2f}"
            rows.append({"latent": best["latent"], "concept": best["concept"], "f1": best["f1"], "steps": window,
                         "unsteered": f"{np.mean([has(r) for r in base]):.2f}", **cells})
            if steps is not None:
                continue
            shown = min(4, len(prompts))
            path = plot_image_grid([[result.baseline[b]] + [batch[b] for batch in result.images] for b in range(shown)],
                              ["unsteered"] + [f"add {c}" for c in columns], [""] * shown,
                              f"{name} latent {best['latent']} ({best['concept']}) added over "
                              f"{region or 'the whole image'} at every step",
                              run_layout.plots_folder(out) / f"steer_{family}.png",
                              [[None] + [None if r is None else r[b] for r in result.regions] for b in range(shown)])
            grids.append(run_layout.relative_link(path, out))
    table = format_table(rows, ["latent", "concept", "f1", "steps", "unsteered", *columns])
    print("share of images where the oracle reads the concept / and everything else unchanged (clean edit)")
    print(table)
    return {"dictionary": name, "rows": rows, "table": table, "grids": grids,
            "cells": "reached / clean: the oracle reads the concept / and every other attribute is unchanged",
            "strength_unit": "multiples of the latent's typical activation"}


def edit_bench(model, dictionaries: dict, out: Path, cfg: DemoConfig) -> dict:
    """A small editing benchmark (RIEBench's protocol, scored by the oracle): one category per attribute, the
    whitened SAE against its random-latent control and the prompt-swap upper bound."""
    from .steering.editing.run import BenchConfig, format_bench_table, run_edit_bench

    bench = BenchConfig(categories=list(cfg.edit_categories), n=cfg.edit_pairs, methods=["sae_pca", "random", "swap"],
                        ks=[32], strengths=[2.0], seed=cfg.seed, out=str(out / run_layout.DEMO_EDIT_BENCH_DIR / run_layout.RESULTS_FILE),
                        quiet=cfg.quiet)
    _say(f"editing benchmark: {', '.join(bench.categories)} x {bench.n} pairs, sae_pca vs random latents vs prompt swap")
    results = run_edit_bench(bench, model=model, dictionaries={"sae_pca": dictionaries["sae_pca"]})
    table = format_bench_table(results["rows"], reference="sae_pca")
    print(table)
    return {"table": table, "results": run_layout.relative_link(bench.out, out)}


def register(sub) -> None:
    p = sub.add_parser("demo", help="capture -> SAEs + ITDA -> held-out evaluation -> sweeps and plots, on the embedded model")
    add_config_arguments(p, DemoConfig)
    p.set_defaults(func=lambda a: run_demo(config_from_args(DemoConfig, a)) and 0)
