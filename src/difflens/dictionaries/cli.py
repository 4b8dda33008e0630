"""`difflens train`, `difflens eval`, `difflens analyze`: thin wrappers over the Python API.

Run alone (without the other areas) as ``python -m difflens.dictionaries.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a dictionary (TopK SAE, ITDA or neuron baseline) on one stored site")
    p.add_argument("--store", required=True, help="activation store folder (or a .safetensors file with an 'acts' tensor)")
    p.add_argument("--site", required=True, help="site name, e.g. double.18.img.out")
    p.add_argument("--step", type=int, default=None, help="denoising step (needed when several are stored)")
    p.add_argument("--method", choices=["sae", "itda", "neurons"], default="sae")
    p.add_argument("--out", default="runs/train", help="run folder; the dictionary goes to <out>/<site>/")
    p.add_argument("--normalization", choices=["none", "standardise", "pca"], default="pca")
    p.add_argument("--k", type=int, default=None, help="active latents per token (SAE 64, ITDA 32; neurons: keep all)")
    p.add_argument("--num-latents", type=int, default=0, help="SAE latents (0: expansion factor × width)")
    p.add_argument("--expansion-factor", type=int, default=16)
    p.add_argument("--tokens", type=int, default=None, help="training tokens (SAE 10M, ITDA 1M; epochs repeat)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--grad-clip", type=float, default=10.0)
    p.add_argument("--k-aux", type=int, default=64, help="AuxK latents (0 disables AuxK)")
    p.add_argument("--auxk-coef", type=float, default=1 / 32)
    p.add_argument("--dead-window", type=int, default=1_000_000, help="tokens without firing before a latent counts as dead")
    p.add_argument("--threshold", type=float, default=0.3, help="ITDA: per-token loss above which a token joins")
    p.add_argument("--max-atoms", type=int, default=65536)
    p.add_argument("--max-add-per-batch", type=int, default=512)
    p.add_argument("--prune-cos", type=float, default=0.8, help="ITDA: skip candidates this close to an atom (<=0: off)")
    p.add_argument("--norm-fit-tokens", type=int, default=1_000_000)
    p.add_argument("--min-tokens-per-dim", type=float, default=10.0, help="refuse normalisation fits on fewer tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (0: never)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--logger", choices=["none", "wandb", "tensorboard"], default="none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="FVU, variance explained, L0 and dead fraction of trained dictionaries")
    e.add_argument("--store", required=True)
    e.add_argument("--run", required=True, help="run folder (<run>/<site>/) or one dictionary folder")
    e.add_argument("--step", type=int, default=None)
    e.add_argument("--tokens", type=int, default=100_000, help="evaluation window in tokens")
    e.add_argument("--batch-size", type=int, default=4096)
    e.add_argument("--out", default=None, help="metrics JSON (default <run>/metrics.json)")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    a = subparsers.add_parser("analyze", help="residual norms, PCA spectrum, k/size sweep, across-layer comparison (JSON + PNG)")
    a.add_argument("--store", required=True)
    a.add_argument("--out", required=True, help="folder for analysis.json and the plots")
    a.add_argument("--what", default="norms,pca", help="comma list of: norms, pca, sweep, layers")
    a.add_argument("--site", default=None, help="site for pca and sweep")
    a.add_argument("--step", type=int, default=None)
    a.add_argument("--ks", type=_ints, default=[8, 16, 32, 64])
    a.add_argument("--sizes", type=_ints, default=[1024, 4096])
    a.add_argument("--tokens", type=int, default=200_000, help="training tokens per sweep SAE / tokens per analysis")
    a.add_argument("--batch-size", type=int, default=4096)
    a.add_argument("--normalization", choices=["none", "standardise", "pca"], default="pca")
    a.add_argument("--run", default=None, help="run folder with one dictionary per site (for 'layers')")
    a.set_defaults(func=cmd_analyze)


def cmd_train(args) -> int:
    from .itda import ITDAConfig
    from .neurons import NeuronBasis
    from .io import save_dictionary
    from .sources import open_reader, resolve_step
    from .topk_sae import SAEConfig
    from .trainer import ITDATrainConfig, RunConfig, SAETrainConfig, train_itda, train_sae

    step = resolve_step(args.store, args.site, args.step)
    reader = open_reader(args.store, args.site, step)
    run = RunConfig(out=args.out, site=args.site, step=step, norm_fit_tokens=args.norm_fit_tokens,
                    min_tokens_per_dim=args.min_tokens_per_dim, checkpoint_every=args.checkpoint_every,
                    device=args.device, logger=args.logger, progress=not args.quiet, meta={"store": str(args.store)})
    if args.method == "sae":
        sae_cfg = SAEConfig(num_latents=args.num_latents, expansion_factor=args.expansion_factor, k=args.k or 64,
                            normalization=args.normalization)
        cfg = SAETrainConfig(lr=args.lr, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, batch_size=args.batch_size,
                             num_tokens=args.tokens or 10_000_000, k_aux=args.k_aux, auxk_coef=args.auxk_coef,
                             dead_window_tokens=args.dead_window, seed=args.seed)
        train_sae(reader, sae_cfg, cfg, run, resume=not args.no_resume)
    elif args.method == "itda":
        icfg = ITDAConfig(k=args.k or 32, threshold=args.threshold, max_atoms=args.max_atoms,
                          max_add_per_batch=args.max_add_per_batch or None,
                          prune_cos=args.prune_cos if args.prune_cos > 0 else None, normalization=args.normalization)
        train_itda(reader, icfg, ITDATrainConfig(batch_size=args.batch_size, num_tokens=args.tokens or 1_000_000, seed=args.seed),
                   run, resume=not args.no_resume)
    else:
        save_dictionary(NeuronBasis(reader.dim, args.k), run.folder(), meta={"site": args.site, "step": step, "store": str(args.store)})
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {run.folder()}")
    return 0


def _dictionary_folders(run: Path) -> list[Path]:
    if (run / "cfg.json").exists():
        return [run]
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    found = sorted(p for p in run.iterdir() if (p / "cfg.json").exists())
    if not found:
        raise FileNotFoundError(f"no dictionaries (folders with cfg.json) in {run}")
    return found


def cmd_eval(args) -> int:
    from difflens.evaluation.metrics import evaluate, format_table

    from .io import load_dictionary, read_cfg
    from .sources import open_reader

    run = Path(args.run)
    rows = []
    for folder in _dictionary_folders(run):
        meta = read_cfg(folder).get("difflens_meta", {})
        site = meta.get("site", folder.name)
        step = args.step if args.step is not None else meta.get("step")
        reader = open_reader(args.store, site, step)
        d = load_dictionary(folder)
        rows.append({"dictionary": str(folder), "site": site, "step": step,
                     **evaluate(d, reader, max_tokens=args.tokens, batch_size=args.batch_size, device=args.device)})
    out = Path(args.out) if args.out else (run if run.is_dir() and not (run / "cfg.json").exists() else run.parent) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fvu_definition": "sum|x-xhat|^2 / sum|x-mean(x)|^2 over the evaluated tokens", "results": rows}, indent=2))
    print(format_table(rows, ["site", "step", "kind", "normalization", "num_latents", "fvu", "variance_explained", "fvu_normalized", "l0", "dead_fraction", "tokens"]))
    print(f"wrote {out}")
    return 0


def cmd_analyze(args) -> int:
    from difflens.evaluation import analyses
    from difflens.evaluation.metrics import format_table

    from .sources import open_reader, open_store, resolve_step
    from .trainer import RunConfig, SAETrainConfig

    what = {w.strip() for w in args.what.split(",") if w.strip()}
    unknown = what - {"norms", "pca", "sweep", "layers"}
    if unknown:
        raise ValueError(f"unknown analyses {sorted(unknown)}; choose from norms, pca, sweep, layers")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if "norms" in what:
        report["residual_norms"] = analyses.residual_norms(open_store(args.store), max_tokens=args.tokens, out_dir=out)
    if what & {"pca", "sweep"}:
        if not args.site:
            raise ValueError("--site is required for the pca and sweep analyses")
        step = resolve_step(args.store, args.site, args.step)
        reader = open_reader(args.store, args.site, step)
        if "pca" in what:
            report["pca_spectrum"] = analyses.pca_spectrum(reader, args.site, max_tokens=args.tokens, out_dir=out)
            print(f"{args.site}: top PC holds {report['pca_spectrum']['top1_fraction']:.1%} of the variance; "
                  f"{report['pca_spectrum']['components_for_90pct']} components hold 90 %")
        if "sweep" in what:
            cfg = SAETrainConfig(batch_size=args.batch_size, num_tokens=args.tokens)
            run = RunConfig(out=str(out), site=args.site, step=step, checkpoint_every=0, progress=False)
            rows = analyses.sweep_k_size(reader, args.site, args.ks, args.sizes, cfg, run, normalization=args.normalization)
            report["sweep"] = rows
            print(format_table(rows, ["num_latents", "k", "fvu", "l0", "dead_fraction"]))
    if "layers" in what:
        if not args.run:
            raise ValueError("--run is required for the layers analysis")
        rows = analyses.across_layers(args.store, Path(args.run), args.step, min(args.tokens, 100_000), out)
        report["layers"] = rows
        print(format_table(rows, ["site", "kind", "fvu", "l0", "dead_fraction"]))
    (out / "analysis.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'analysis.json'} and {len(list(out.glob('*.png')))} plots in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="difflens")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"difflens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
