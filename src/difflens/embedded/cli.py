"""`difflens world train|render|quality|ship|pretrain-text|binding|samples|oracle-robustness` and `difflens generate`:
flags built from their configs.

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
from difflens.reading import read_json

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
    objects: list[int] = field(default_factory=lambda: [1])
    """object counts to score, e.g. 1,2,3 (1: the model card's single-object measure; 2 and 3: every object
    matched by grid cell, with count_acc and bound_acc); one JSON line per count"""
    world: Literal["classic", "rich"] | None = None
    """world of the prompts; None: the model's"""


@dataclass
class BindingCommand:
    """`difflens world binding`: does a model's text encoder bind each object's words to their phrase?"""

    weights: str | None = None
    """model folder, or a `world train` folder (its latest EMA checkpoint); None: the shipped rich weights"""
    captions: int = 4000
    """captions sampled for the probe (75 % train it, the rest score it)"""
    world: Literal["classic", "rich"] | None = None
    """world of the captions; None: the model's"""
    seed: int = 0
    """caption seed"""


@dataclass
class SamplesCommand:
    """`difflens world samples`: a 4 x 4 grid of a rich model's samples with the oracle's verdicts."""

    weights: str | None = None
    """model folder, or a `world train` folder (its latest EMA checkpoint); None: the shipped rich weights"""
    guidance: float | None = None
    """classifier-free guidance scale; None: the model's default"""
    steps: int = DEFAULT_STEPS
    """Euler sampling steps"""
    out: str = "docs/rich_model_samples.png"
    """PNG to write"""


@dataclass
class RobustnessCommand:
    """`difflens world oracle-robustness`: the oracle's accuracy on renders damaged like generations."""

    n: int = 800
    """scenes per world"""
    world: Literal["classic", "rich", "both"] = "both"
    """which oracle: classic (one-object scenes), rich (one to three objects), or both"""
    seed: int = 5
    """scene seed"""


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


def _load_pipe(weights: str | None, default_world: str = "classic"):
    from .pipeline import SHIPPED_WEIGHTS
    from .train import load_trained

    return load_trained(SHIPPED_WEIGHTS[default_world] if weights is None else weights)


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
    for n_objects in cmd.objects:
        print(json.dumps(measure_quality(pipe, n=cmd.n, num_steps=cmd.steps, n_objects=n_objects, world=cmd.world)),
              flush=True)


def cmd_pretrain_text(args) -> None:
    from .binding import format_binding
    from .text_pretrain import TextPretrainConfig, pretrain_text_encoder

    _, result = pretrain_text_encoder(config_from_args(TextPretrainConfig, args), log=lambda m: print(m, flush=True))
    print(format_binding(result))
    print(f"mean cosine between background colour words' states: {result['background_word_cosine']}")
    print(json.dumps(result))


def cmd_binding(args) -> None:
    from .binding import format_binding, measure_binding

    cmd = config_from_args(BindingCommand, args)
    pipe = _load_pipe(cmd.weights, default_world="rich")
    world = cmd.world or pipe.config.world
    result = {"weights": cmd.weights, "world": world,
              **measure_binding(pipe.text_encoder, pipe.tokenizer, world, cmd.captions, cmd.seed)}
    print(format_binding(result))
    print(json.dumps(result))


def cmd_samples(args) -> None:
    from .samples import sample_grid

    cmd = config_from_args(SamplesCommand, args)
    pipe = _load_pipe(cmd.weights, default_world="rich").use_guidance(cmd.guidance)
    title = Path(cmd.weights).name if cmd.weights else "embedded-rich"
    rows = sample_grid(pipe, cmd.out, num_steps=cmd.steps, title=title)
    print(json.dumps({"out": cmd.out, "images": rows}))
    print(f"wrote {cmd.out}")


def cmd_oracle_robustness(args) -> None:
    from ..world.robustness import format_robustness, oracle_robustness

    cmd = config_from_args(RobustnessCommand, args)
    out: dict = {"n": cmd.n}
    for world in (("classic", "rich") if cmd.world == "both" else (cmd.world,)):
        out[world] = oracle_robustness(world, n=cmd.n, seed=cmd.seed)
        print(f"\n{world} world, {cmd.n} scenes" + (" (1-3 objects)" if world == "rich" else " (one object)"))
        print(format_robustness(world, out[world]), flush=True)
    print(json.dumps(out))


def cmd_ship(args) -> None:
    from .card import ship
    from .train import checkpoint_step, load_checkpoint_ema

    cmd = config_from_args(ShipCommand, args)
    folder = Path(cmd.train_dir)
    config = read_json(folder / "train_config.json", "world training config", expect=dict,
                       hint="rerun `difflens world train` into that folder")
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
    from .text_pretrain import TextPretrainConfig
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
    add_command(wsub, "pretrain-text", "pretrain a text encoder to parse captions (step 1 of the rich model's "
                "recipe) and probe its binding", cmd_pretrain_text, TextPretrainConfig)
    add_command(wsub, "binding", "probe whether a model's text encoder binds words to their phrase", cmd_binding,
                BindingCommand)
    add_command(wsub, "samples", "a grid of a rich model's samples with the oracle's verdicts", cmd_samples,
                SamplesCommand)
    add_command(wsub, "oracle-robustness", "the oracle's accuracy on renders damaged like generations",
                cmd_oracle_robustness, RobustnessCommand)

    s = wsub.add_parser("ship", help="export a training run's EMA weights with a model card (measures quality)")
    s.add_argument("train_dir", help=field_docs(ShipCommand)["train_dir"])
    add_config_arguments(s, ShipCommand, exclude={"train_dir"})
    s.set_defaults(func=cmd_ship)

    g = sub.add_parser("generate", help="generate an image with the embedded model")
    g.add_argument("prompt", help=field_docs(GenerateCommand)["prompt"])
    add_config_arguments(g, GenerateCommand, exclude={"prompt"})
    g.set_defaults(func=cmd_generate)
