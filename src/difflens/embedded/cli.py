"""`difflens world train|render|quality` and `difflens generate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _save_png(image_HWC: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_HWC).save(path)


def _load_pipe(weights: str | None):
    from .pipeline import WEIGHTS_DIR, ShapesPipeline

    return ShapesPipeline.from_pretrained(weights or WEIGHTS_DIR)


def cmd_train(args) -> None:
    from .config import ShapesModelConfig
    from .train import TrainConfig, train

    cfg = TrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      data_seed=args.data_seed, checkpoint_every=args.checkpoint_every, threads=args.threads,
                      caption_dropout=args.caption_dropout, loss_t_floor=args.loss_t_floor,
                      autoencoder_steps=args.autoencoder_steps, autoencoder_latent_noise=args.autoencoder_noise,
                      model=ShapesModelConfig(latent_channels=args.latent_channels))
    pipe = train(cfg)
    export = Path(args.export or Path(args.out) / "final")
    pipe.save_pretrained(export)
    print(f"EMA weights written to {export}")


def cmd_render(args) -> None:
    from ..world import render, sample_scenes

    for i, scene in enumerate(sample_scenes(args.n, seed=args.seed, split=args.split)):
        _save_png(render(scene)[0], Path(args.out) / f"{i:04d}.png")
        print(f"{i:04d}.png  {scene.caption}")


def cmd_quality(args) -> None:
    from .quality import measure_quality

    pipe = _load_pipe(args.weights)
    pipe.config.guidance_scale = pipe.resolve_guidance(args.guidance)
    print(json.dumps(measure_quality(pipe, n=args.n, num_steps=args.steps)))


def cmd_ship(args) -> None:
    from .card import ship
    from .train import load_checkpoint_ema

    folder = Path(args.train_dir)
    config = json.loads((folder / "train_config.json").read_text())
    pipe = load_checkpoint_ema(folder)
    pipe.config.guidance_scale = pipe.resolve_guidance(args.guidance)
    notes = Path(args.notes).read_text() if args.notes else ""
    quality = ship(pipe, config, dest=args.dest, n=args.n, notes=notes)
    print(json.dumps(quality))


def cmd_generate(args) -> None:
    images = _load_pipe(args.weights).generate([args.prompt], num_steps=args.steps, seeds=[args.seed],
                                               guidance_scale=args.guidance)
    _save_png(images[0], args.output)
    print(f"wrote {args.output}")


def register(sub) -> None:
    from .pipeline import DEFAULT_STEPS

    world = sub.add_parser("world", help="the shapes world and its embedded model")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    t = wsub.add_parser("train", help="train the embedded model (checkpoints, resumes after a kill)")
    t.add_argument("--out", default="checkpoints/embedded", help="training folder (checkpoint, loss log)")
    t.add_argument("--export", default=None, help="where to write the final EMA weights (default OUT/final)")
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty prompts (for guidance)")
    t.add_argument("--loss-t-floor", type=float, default=0.5, help="noise level below which loss weights stop growing")
    t.add_argument("--latent-channels", type=int, default=8, help="autoencoder latent channels (0: pixel space)")
    t.add_argument("--autoencoder-steps", type=int, default=4500)
    t.add_argument("--autoencoder-noise", type=float, default=0.05, help="latent noise in autoencoder training")
    t.set_defaults(func=cmd_train)
    r = wsub.add_parser("render", help="render ground-truth scenes to PNG files")
    r.add_argument("--n", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--split", choices=["train", "heldout"], default="train")
    r.add_argument("--out", default="runs/world")
    r.set_defaults(func=cmd_render)
    q = wsub.add_parser("quality", help="score generations from held-out prompts with the oracle")
    q.add_argument("--n", type=int, default=512)
    q.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    q.add_argument("--weights", default=None, help="model folder (default: the shipped weights)")
    q.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's; <= 1: none)")
    q.set_defaults(func=cmd_quality)

    s = wsub.add_parser("ship", help="export a training run's EMA weights with a model card (measures quality)")
    s.add_argument("train_dir", help="training folder written by `difflens world train`")
    s.add_argument("--dest", default=None, help="weights folder (default: the package's shipped weights)")
    s.add_argument("--n", type=int, default=512, help="held-out prompts to score for the card")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale to ship as the model's default")
    s.add_argument("--notes", default=None, help="markdown file appended to the model card (history, limitations)")
    s.set_defaults(func=cmd_ship)

    g = sub.add_parser("generate", help="generate an image with the embedded model")
    g.add_argument("prompt")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Euler steps, 1..50 (default {DEFAULT_STEPS})")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("-o", "--output", default="out.png")
    g.add_argument("--weights", default=None, help="model folder (default: the shipped weights)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's; <= 1: none)")
    g.set_defaults(func=cmd_generate)
