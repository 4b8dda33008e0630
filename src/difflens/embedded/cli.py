"""`difflens world train|render|quality|ship` and `difflens generate`: flags built from their configs.

`world train` takes its flags from `TrainConfig` (and those of `MODEL_FLAGS` from its nested `ShapesModelConfig`);
the other commands from the small command dataclasses below. Field docstrings are the --help text and flags
left out keep the dataclass defaults, so the CLI and the Python API share one set of defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from difflens.configs import add_command, add_config_arguments, config_from_args, field_docs, given

from .pipeline import DEFAULT_STEPS

# the fields of the nested `TrainConfig.model` that `world train` exposes as flags
MODEL_FLAGS = frozenset({"latent_channels", "world", "max_text_len", "num_double_blocks", "num_single_blocks",
                         "text_layers", "num_heads", "text_width"})


@dataclass
class WorldTrainCommand:
    """`difflens world train` options that are not training settings."""

    export: str | None = None
    """where to write the final EMA weights; None: OUT/final"""
    until: int | None = None
    """stop after this step (checkpointed and exported) with the learning-rate schedule of --steps unchanged; the
    same command without it resumes the schedule"""


@dataclass
class RenderCommand:
    """`difflens world render`: ground-truth scenes as PNG files."""

    n: int = 8
    """scenes to render"""
    seed: int = 0
    """scene sampling seed"""
    split: Literal["train", "heldout"] = "train"
    """which prompts to draw scenes from: the training split or the held-out one"""
    world: Literal["classic", "rich"] = "classic"
    """classic (shapes on plain backgrounds) or rich (textures, patterns, composite objects, up to 3)"""
    out: str = "runs/world"
    """folder for the PNG files (0000.png, 0001.png, ...)"""


@dataclass
class QualityCommand:
    """`difflens world quality`: oracle scores of generations from held-out prompts."""

    n: int = 512
    """held-out prompts to generate and score"""
    steps: int = DEFAULT_STEPS
    """Euler sampling steps"""
    weights: str | None = None
    """model folder, or a `world train` folder (its latest EMA checkpoint); None: the shipped weights"""
    guidance: float | None = None
    """classifier-free guidance scale; None: the model's default; <= 1: no guidance"""


@dataclass
class ShipCommand:
    """`difflens world ship`: a training run's EMA weights, with a model card, as the shipped weights."""

    train_dir: str
    """training folder written by `difflens world train`"""
    dest: str | None = None
    """weights folder to write; None: the package's shipped weights of the model's world (weights or weights_rich)"""
    n: int = 512
    """held-out prompts to score for the card"""
    guidance: float | None = None
    """guidance scale to ship as the model's default; None: the trained model's"""
    notes: str | None = None
    """markdown file appended to the model card (history, limitations); None: no notes"""


@dataclass
class GenerateCommand:
    """`difflens generate`: one image from a prompt with the embedded model."""

    prompt: str
    """what to draw, in the shapes world's words, e.g. 'a large red circle on the left on a white background'"""
    steps: int = DEFAULT_STEPS
    """Euler steps, 1..50"""
    seed: int = 0
    """noise seed"""
    output: str = field(default="out.png", metadata={"aliases": ["-o"]})
    """PNG file to write"""
    weights: str | None = None
    """model folder, or a `world train` folder (its latest EMA checkpoint); None: the shipped weights"""
    guidance: float | None = None
    """classifier-free guidance scale; None: the model's default; <= 1: no guidance"""


def _save_png(image_HWC: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_HWC).save(path)


def _load_pipe(weights: str | None):
    from .pipeline import WEIGHTS_DIR
    from .train import load_trained

    return load_trained(WEIGHTS_DIR if weights is None else weights)


def train_config_from_args(args):
    """The `TrainConfig` of a `world train` command line: flags given, dataclass defaults for the rest."""
    from .config import ShapesModelConfig
    from .train import TrainConfig

    model = ShapesModelConfig(**{k: v for k, v in given(args, ShapesModelConfig).items() if k in MODEL_FLAGS})
    return config_from_args(TrainConfig, args, model=model)


def cmd_train(args) -> None:
    from .train import train

    cmd = config_from_args(WorldTrainCommand, args)
    cfg = train_config_from_args(args)
    pipe = train(cfg, until=cmd.until)
    export = Path(cfg.out) / "final" if cmd.export is None else Path(cmd.export)
    pipe.save_pretrained(export)
    print(f"EMA weights written to {export}")


def cmd_render(args) -> None:
    from ..world import render, sample_scenes

    cmd = config_from_args(RenderCommand, args)
    for i, scene in enumerate(sample_scenes(cmd.n, seed=cmd.seed, split=cmd.split, world=cmd.world)):
        _save_png(render(scene)[0], Path(cmd.out) / f"{i:04d}.png")
        print(f"{i:04d}.png  {scene.caption}")


def cmd_quality(args) -> None:
    from .quality import measure_quality

    cmd = config_from_args(QualityCommand, args)
    pipe = _load_pipe(cmd.weights).use_guidance(cmd.guidance)
    print(json.dumps(measure_quality(pipe, n=cmd.n, num_steps=cmd.steps)))


def cmd_ship(args) -> None:
    from .card import ship
    from .train import checkpoint_step, load_checkpoint_ema

    cmd = config_from_args(ShipCommand, args)
    folder = Path(cmd.train_dir)
    config = json.loads((folder / "train_config.json").read_text())
    pipe = load_checkpoint_ema(folder).use_guidance(cmd.guidance)
    notes = "" if cmd.notes is None else Path(cmd.notes).read_text()
    quality = ship(pipe, config, dest=cmd.dest, n=cmd.n, notes=notes, step=checkpoint_step(folder))
    print(json.dumps(quality))


def cmd_generate(args) -> None:
    cmd = config_from_args(GenerateCommand, args)
    images = _load_pipe(cmd.weights).generate([cmd.prompt], num_steps=cmd.steps, seeds=[cmd.seed],
                                              guidance_scale=cmd.guidance)
    _save_png(images[0], cmd.output)
    print(f"wrote {cmd.output}")


def register(sub) -> None:
    from .config import ShapesModelConfig
    from .train import TrainConfig

    world = sub.add_parser("world", help="the shapes world and its embedded model")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")

    t = wsub.add_parser("train", help="train the embedded model (checkpoints, resumes after a kill)")
    add_config_arguments(t.add_argument_group("training"), TrainConfig, exclude={"model"})
    add_config_arguments(t.add_argument_group("model"), ShapesModelConfig, only=MODEL_FLAGS)
    add_config_arguments(t.add_argument_group("export"), WorldTrainCommand)
    t.set_defaults(func=cmd_train)

    add_command(wsub, "render", "render ground-truth scenes to PNG files", cmd_render, RenderCommand)
    add_command(wsub, "quality", "score generations from held-out prompts with the oracle", cmd_quality, QualityCommand)

    s = wsub.add_parser("ship", help="export a training run's EMA weights with a model card (measures quality)")
    s.add_argument("train_dir", help=field_docs(ShipCommand)["train_dir"])
    add_config_arguments(s, ShipCommand, exclude={"train_dir"})
    s.set_defaults(func=cmd_ship)

    g = sub.add_parser("generate", help="generate an image with the embedded model")
    g.add_argument("prompt", help=field_docs(GenerateCommand)["prompt"])
    add_config_arguments(g, GenerateCommand, exclude={"prompt"})
    g.set_defaults(func=cmd_generate)
