"""`difflens demo`: the main job end to end on the embedded model, in a few minutes on a CPU.

capture residual streams -> train a PCA-whitened TopK SAE, an unwhitened one, an ITDA dictionary and the
MLP-neuron baseline on the main site -> evaluate all of them on activations of *other* images ->
residual-norm, PCA-spectrum and k/size analyses -> one run folder with `summary.json` and PNG plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    model: str = "embedded"
    train_images: int = 192  # 192 x 256 image tokens per (site, step)
    eval_images: int = 48  # different prompts and seeds: metrics are measured on unseen images
    steps_to_record: tuple[int, ...] = (0, 3, 7)
    site: str | None = None  # default: the adapter's main site (last double block, image stream)
    site_step: int = 3
    expansion_factor: int = 8
    k: int = 16
    sae_tokens: int = 1_500_000
    itda_tokens: int = 200_000
    itda_threshold: float = 0.3
    eval_tokens: int = 12_288
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage into `cfg.out` (each stage resumes or is skipped if its output exists); returns the summary."""
    from .adapters import load_adapter
    from .capture.runner import CaptureConfig, run_capture
    from .dictionaries.io import load_dictionary, save_dictionary
    from .dictionaries.itda import ITDAConfig
    from .dictionaries.neurons import NeuronBasis
    from .dictionaries.sources import open_reader, open_store
    from .dictionaries.topk_sae import SAEConfig
    from .dictionaries.trainer import ITDATrainConfig, RunConfig, SAETrainConfig, train_itda, train_sae
    from .evaluation import analyses
    from .evaluation.metrics import evaluate, format_table

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    adapter = load_adapter(cfg.model)
    site = cfg.site or adapter.default_sites[0]
    mlp_site = site.rsplit(".", 1)[0] + ".mlp"
    residual_sites = [s.name for s in adapter.sites() if s.name.endswith(".out")]

    def capture(name: str, n_images: int, seed: int, sites: list[str], steps: list[int]) -> Path:
        start = time.time()
        _say(f"capturing {len(sites)} sites x steps {steps} from {n_images} images -> {out / name}")
        path = run_capture(CaptureConfig(out=str(out / name), model=cfg.model, sites=sites, steps_to_record=steps,
                                         prompts="world", n_images=n_images, seed=seed, progress=cfg.progress),
                           adapter=adapter)
        timings[f"capture_{name}"] = time.time() - start
        return path

    train_store = capture("store", cfg.train_images, cfg.seed, residual_sites + [mlp_site], list(cfg.steps_to_record))
    eval_store = capture("store_eval", cfg.eval_images, cfg.seed + 10_000, [site, mlp_site], [cfg.site_step])
    reader = open_reader(train_store, site, cfg.site_step)

    def run_cfg(name: str, the_site: str = site) -> RunConfig:
        return RunConfig(out=str(out / "dictionaries" / name), site=the_site, step=cfg.site_step,
                         norm_fit_tokens=reader.num_rows, device=cfg.device, progress=cfg.progress,
                         meta={"store": str(train_store)})

    sae_train = SAETrainConfig(batch_size=4096, num_tokens=cfg.sae_tokens, lr=1e-3, k_aux=2 * cfg.k,
                               dead_window_tokens=min(cfg.sae_tokens // 4, 500_000), seed=cfg.seed)
    folders = {}
    for name, normalization in (("sae_pca", "pca"), ("sae_none", "none")):
        start = time.time()
        _say(f"training TopK SAE ({normalization} normalisation) on {site} step {cfg.site_step}")
        train_sae(reader, SAEConfig(expansion_factor=cfg.expansion_factor, k=cfg.k, normalization=normalization),
                  sae_train, run_cfg(name))
        timings[f"train_{name}"] = time.time() - start
        folders[name] = run_cfg(name).folder()
    start = time.time()
    _say(f"training ITDA (threshold {cfg.itda_threshold}, k {cfg.k}) on {site}")
    train_itda(reader, ITDAConfig(k=cfg.k, threshold=cfg.itda_threshold, max_atoms=cfg.expansion_factor * reader.dim * 4),
               ITDATrainConfig(num_tokens=cfg.itda_tokens, seed=cfg.seed), run_cfg("itda"))
    timings["train_itda"] = time.time() - start
    folders["itda"] = run_cfg("itda").folder()
    mlp_reader = open_reader(train_store, mlp_site, cfg.site_step)
    folders["neurons"] = run_cfg("neurons", mlp_site).folder()
    save_dictionary(NeuronBasis(mlp_reader.dim, cfg.k), folders["neurons"],
                    meta={"site": mlp_site, "step": cfg.site_step, "store": str(train_store)})

    _say(f"evaluating on {cfg.eval_images} unseen images")
    rows = []
    for name, folder in folders.items():
        the_site = mlp_site if name == "neurons" else site
        metrics = evaluate(load_dictionary(folder), open_reader(eval_store, the_site, cfg.site_step),
                           max_tokens=cfg.eval_tokens, device=cfg.device)
        rows.append({"dictionary": name, "site": the_site, "step": cfg.site_step, **metrics})
    table = format_table(rows, ["dictionary", "site", "normalization", "num_latents", "fvu", "variance_explained",
                                "l0", "dead_fraction"])
    print(table)

    _say("analyses: residual norms by layer x step, PCA spectrum, k/size sweep")
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    store = open_store(train_store)
    report = {
        "residual_norms": analyses.residual_norms(store, max_tokens=4096, out_dir=plots_dir),
        "pca_spectrum": analyses.pca_spectrum(reader, site, max_tokens=reader.num_rows, out_dir=plots_dir),
    }
    sweep_train = SAETrainConfig(batch_size=4096, num_tokens=cfg.sae_tokens // 3, lr=1e-3, seed=cfg.seed,
                                 dead_window_tokens=cfg.sae_tokens // 12)
    sweep_run = RunConfig(out=str(out / "sweep"), site=site, step=cfg.site_step, checkpoint_every=0, progress=False,
                          norm_fit_tokens=reader.num_rows)
    report["sweep"] = analyses.sweep_k_size(reader, site, [4, 8, 16, 32], [2 * reader.dim, cfg.expansion_factor * reader.dim],
                                            sweep_train, sweep_run, normalization="pca")
    summary = {
        "model": cfg.model,
        "site": site,
        "step": cfg.site_step,
        "fvu_definition": "sum |x - x_hat|^2 / sum |x - mean(x)|^2 over evaluation tokens (per-dimension mean)",
        "metrics": rows,
        "analyses": report,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "plots": sorted(str(p) for folder in (plots_dir, out / "sweep") for p in folder.glob("*.png")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "metrics.txt").write_text(table + "\n")
    _say(f"done: {out / 'summary.json'}, metrics table {out / 'metrics.txt'}, plots in {plots_dir}")
    return summary


def register(sub) -> None:
    p = sub.add_parser("demo", help="capture -> SAE + ITDA -> evaluate -> plots, on the embedded model")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--model", default="embedded")
    p.add_argument("--train-images", type=int, default=DemoConfig.train_images)
    p.add_argument("--sae-tokens", type=int, default=DemoConfig.sae_tokens)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda a: run_demo(DemoConfig(out=a.out, model=a.model, train_images=a.train_images,
                                                       sae_tokens=a.sae_tokens, progress=not a.quiet)) and 0)
