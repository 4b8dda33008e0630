"""`difflens sites`, `difflens cache`, `difflens cache info`, `difflens cache split` -- thin over the capture and store APIs."""

from __future__ import annotations

import argparse
import json
import os

from difflens.adapters.registry import DEFAULT_MODEL, MODEL_NAMES


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _steps(text: str) -> list[int] | str:
    if text.strip() == "all":
        return "all"
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps-to-record takes comma-separated step numbers or 'all', got {text!r}")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name ({', '.join(MODEL_NAMES)}); default {DEFAULT_MODEL}")
    p.add_argument("--torch-dtype", choices=["float32", "float16", "bfloat16"], help="model weights dtype")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--cpu-offload", action="store_true", help="model CPU offload (GPU only)")
    p.add_argument("--quantization", choices=["nf4"], help="4-bit NF4 FLUX transformer (GPU + bitsandbytes)")


def _load_options(args):
    from difflens.adapters import LoadOptions

    return LoadOptions(dtype=args.torch_dtype, device=args.device, cpu_offload=args.cpu_offload,
                       quantization=args.quantization)


def register(subparsers) -> None:
    p = subparsers.add_parser("sites", help="list a model's hook sites and their shapes")
    _add_model_args(p)
    p.add_argument("--resolution", type=int, help="image size in px (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_sites)

    p = subparsers.add_parser(
        "cache", help="capture activations into a store (`cache info DIR` describes one, `cache split DIR` re-splits it)",
        description="Capture activations: difflens cache --model M --sites S --out DIR. "
                    "Describe a store: difflens cache info DIR [--verify]. "
                    "Choose its held-out images anew: difflens cache split DIR --holdout F [--seed S]. "
                    "Multi-process: torchrun --nproc_per_node N --no-python difflens cache ...")
    p.add_argument("action", nargs="?", choices=["info", "split"],
                   help="'info DIR' prints what a store holds; 'split DIR' re-chooses its held-out images")
    p.add_argument("dir", nargs="?", help="store folder (with 'info' or 'split')")
    p.add_argument("--verify", action="store_true", help="with info: checksum every shard")
    _add_model_args(p)
    p.add_argument("--sites", type=_csv, help="comma-separated site names or globs (default: the model's main site)")
    p.add_argument("--steps-to-record", type=_steps, default=None, help="e.g. 0 or 0,3,7 or all (default 0)")
    p.add_argument("--prompts", default="world", help="'world' or a text file with one prompt per line")
    p.add_argument("--n-images", type=int, help="number of images (default: file lines, or 256 world prompts)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--num-steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, default=0, help="image i gets seed + i (capture); the split's seed (with 'split')")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of images held out of training, chosen by image (default 0.1; 0: no split)")
    p.add_argument("--batch-size", type=int, default=8, help="images per generation batch / shard")
    p.add_argument("--store-dtype", choices=["float16", "bfloat16"], help="stored row dtype (default: per model)")
    p.add_argument("--no-images", action="store_true", help="do not save the generated images")
    p.add_argument("--out", help="store folder (rerun the same command to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)


def cmd_sites(args) -> int:
    from difflens.adapters import load_adapter

    adapter = load_adapter(args.model, _load_options(args))
    sites = adapter.sites(args.resolution)
    if args.json:
        print(json.dumps([{"name": s.name, "stream": s.stream, "kind": s.kind, "tokens": s.tokens, "dim": s.dim,
                           "grid": s.grid} for s in sites], indent=1))
        return 0
    res = args.resolution or adapter.default_resolution
    print(f"{adapter.name} at {res} px  (default sites: {', '.join(adapter.default_sites)})")
    print(f"{'site':<44} {'stream':>6} {'kind':>6} {'tokens':>7} {'dim':>6} {'grid':>7}")
    for s in sites:
        grid = "x".join(map(str, s.grid)) if s.grid else "-"
        print(f"{s.name:<44} {s.stream:>6} {s.kind:>6} {s.tokens:>7} {s.dim:>6} {grid:>7}")
    return 0


def cmd_cache(args) -> int:
    if args.action in ("info", "split"):
        from difflens.store import ActivationStore

        if not args.dir:
            raise ValueError(f"usage: difflens cache {args.action} DIR" + (" --holdout F [--seed S]" if args.action == "split" else ""))
        store = ActivationStore.open(args.dir)
        if args.action == "split":
            from difflens.store.split import describe_holdout

            held = store.set_holdout(args.holdout, seed=args.seed)
            print(f"held out {len(held['image_ids'])} of {store.meta.get('n_images')} images: "
                  f"{describe_holdout(store.holdout, store.meta.get('n_images'))}")
            return 0
        print(store.describe())
        if args.verify:
            store.verify()
            print("verified: every shard's checksum matches its manifest")
        return 0
    if args.dir:
        raise ValueError(f"unexpected argument {args.dir!r}: the store folder is given with --out")
    if not args.out:
        raise ValueError("--out DIR is required (the store folder)")
    from difflens.capture.runner import CaptureConfig, run_capture

    cfg = CaptureConfig(
        out=args.out, model=args.model, sites=args.sites, steps_to_record=args.steps_to_record, prompts=args.prompts,
        n_images=args.n_images, resolution=args.resolution, num_steps=args.num_steps, guidance=args.guidance,
        seed=args.seed, batch_size=args.batch_size, store_dtype=args.store_dtype, save_images=not args.no_images,
        holdout=args.holdout, load=_load_options(args), progress=not args.quiet,
    )
    path = run_capture(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        from difflens.store import ActivationStore

        print(ActivationStore.open(path).describe())
    return 0
