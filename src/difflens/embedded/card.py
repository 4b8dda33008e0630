"""Ship trained weights into the package with a model card that states how they were made and how good they are."""

from __future__ import annotations

import json
from pathlib import Path

from .pipeline import SHIPPED_WEIGHTS, WEIGHTS_FILE, ShapesPipeline
from .quality import measure_quality

CARD_FILE = "MODEL_CARD.md"
QUALITY_FILE = "quality.json"
_PREDICTION = {
    "x": "the transformer outputs the clean image x_0; the sampler's velocity is (x_t - x_0) / t "
         "and training uses the velocity loss",
    "velocity": "the transformer outputs the velocity noise - x_0 directly",
}


def _text_encoder_origin(train_config: dict) -> str:
    """How the text encoder got its weights, in words, from the training settings."""
    if train_config.get("freeze_text_encoder"):
        return ("pretrained on its own and then frozen" if train_config.get("text_encoder_init")
                else "left at its random init (frozen)")
    return "pretrained, then fine-tuned jointly" if train_config.get("text_encoder_init") else "trained jointly"


def _autoencoder_origin(train_config: dict) -> str:
    """Where a latent model's autoencoder came from, in words."""
    if train_config.get("autoencoder_init"):
        return f"taken from {train_config['autoencoder_init']} and kept frozen"
    return "trained first, then frozen"


def _stopped_at(step: int | None, train_config: dict) -> str:
    """', at step N of an M-step schedule' when training stopped before its schedule ended (`world train --until`)."""
    total = train_config.get("steps")
    if step is None or total is None or step >= total:
        return ""
    return f" at step {step:,} of a {total:,}-step schedule (`world train --until {step}`)"


def _measured_quality(shipped: ShapesPipeline, world: str, n: int, num_steps: int | None) -> tuple:
    """(quality, its markdown table rows, how it was measured, a footnote) of the shipped weights: single-object
    prompts, and in the rich world also 2- and 3-object prompts (one entry per object count)."""
    kwargs = {} if num_steps is None else {"num_steps": num_steps}
    if world == "classic":
        quality = measure_quality(shipped, n=n, **kwargs)
        table = ["| metric | value |", "|---|---|",
                 *[f"| {k} | {v:.3f} |" for k, v in quality.items() if k.endswith("_acc")]]
        measured = (f"{quality['n']} single-object prompts from held-out (colour, shape, position) combinations, "
                    f"{quality['steps']} Euler steps, guidance scale {quality['guidance']} (the model's default), "
                    "scored by the\noracle (`difflens.world.read_image`) on the largest object found:")
        footnote = ("`one_object_acc` is the share of images where the oracle found exactly one object (stray specks "
                    "count).")
    else:
        quality = {str(k): measure_quality(shipped, n=n, n_objects=k, **kwargs) for k in (1, 2, 3)}
        keys = [k for k in quality["1"] if k.endswith("_acc")]
        table = ["| objects | " + " | ".join(k[:-4] for k in keys) + " | part IoU |",
                 "|---" * (len(keys) + 2) + "|",
                 *[f"| {c} | " + " | ".join(f"{q[k]:.3f}" for k in keys) + f" | {q.get('part_iou', float('nan')):.3f} |"
                   for c, q in quality.items()]]
        first = quality["1"]
        measured = (f"{first['n']} prompts per object count from held-out (colour, pattern, shape) combinations, "
                    f"{first['steps']} Euler steps, guidance scale {first['guidance']} (the model's default), scored "
                    "by the rich\noracle (`difflens.world.read_image(..., world=\"rich\")`), every object matched "
                    "by its grid cell:")
        footnote = ("`count` is the share of images with exactly the prompt's number of objects; `bound` the share of "
                    "objects with every named attribute\n(colour, pattern, shape, size) right; `background` and "
                    "`texture` are per image; part IoU is over composite objects read with the right shape.")
    return quality, table, measured, footnote


def _tokens_line(shipped: ShapesPipeline, train_config: dict) -> str:
    """The card's line on how an image becomes tokens (through the autoencoder of a latent model, or patches)."""
    cfg = shipped.config
    if cfg.latent_channels:
        ae_params = sum(p.numel() for p in shipped.autoencoder.parameters())
        tokens = (f"- image {cfg.image_size}x{cfg.image_size} RGB -> convolutional autoencoder (x4 downsampling, "
                  f"tanh latents, {ae_params / 1e6:.2f} M parameters, {_autoencoder_origin(train_config)}) -> "
                  f"{cfg.grid_size}x{cfg.grid_size} = {cfg.grid_size**2} image tokens of {cfg.latent_channels} "
                  f"channels (row-major)")
    else:
        tokens = (f"- image {cfg.image_size}x{cfg.image_size} RGB, {cfg.patch_size}x{cfg.patch_size} patches -> "
                  f"{cfg.grid_size}x{cfg.grid_size} = {cfg.grid_size**2} image tokens of {cfg.patch_channels} "
                  f"channels (row-major)")
    return tokens


def ship(pipe: ShapesPipeline, train_config: dict, dest: str | Path | None = None, n: int = 512,
         num_steps: int | None = None, notes: str = "", step: int | None = None) -> dict:
    """Write fp16 weights, measure held-out quality on what was written, and write the model card.

    `dest` defaults to the package's shipped-weights folder of the model's world. Quality is measured on
    single-object prompts and, in the rich world, also on 2- and 3-object prompts (then the returned dict has
    one entry per object count). `notes` (markdown: training history, known limitations) are appended to the
    generated card, so a re-ship does not lose what a person wrote. `step`: the training step the weights are from,
    stated on the card beside the schedule's length when it stopped early."""
    world = pipe.config.world
    dest = Path(dest or SHIPPED_WEIGHTS[world])
    pipe.save_pretrained(dest)
    shipped = ShapesPipeline.from_pretrained(dest)  # measure the fp16 weights actually shipped
    quality, table, measured, footnote = _measured_quality(shipped, world, n, num_steps)
    (dest / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
    cfg = shipped.config
    params = sum(p.numel() for p in shipped.transformer.parameters())
    text_params = sum(p.numel() for p in shipped.text_encoder.parameters())
    size_mb = (dest / WEIGHTS_FILE).stat().st_size / 2**20
    tokens = _tokens_line(shipped, train_config)
    lines = [
        "# Embedded shapes-world model" + ("" if world == "classic" else f" ({world} world)"),
        "",
        "A small text-to-image model of the procedural shapes world, built on diffusers' `FluxTransformer2DModel`",
        "(double- and single-stream blocks, like FLUX.1) with a word-level text encoder "
        f"{_text_encoder_origin(train_config)},",
        "with the rectified-flow objective. " + ("It is difflens' default model (`embedded`)." if world == "classic" else
                                        f"Load it as `embedded-{world}`."),
        "",
        "## Architecture",
        tokens,
        f"- transformer width {cfg.width} ({cfg.num_heads} heads x {cfg.head_dim}), {cfg.num_double_blocks} double blocks, "
        f"{cfg.num_single_blocks} single blocks, RoPE axes {list(cfg.axes_dims_rope)}; {params / 1e6:.2f} M parameters",
        f"- text encoder: {len(cfg.vocab)}-word vocabulary, width {cfg.text_encoder_width}, {cfg.text_layers} layers, "
        f"{cfg.max_text_len} tokens; {text_params / 1e6:.2f} M parameters",
        f"- prediction: {_PREDICTION[cfg.prediction]}",
        f"- weights: `{WEIGHTS_FILE}`, fp16, {size_mb:.1f} MB; EMA of the training weights"
        f"{_stopped_at(step, train_config)}",
        "",
        "## Training",
        "```json",
        json.dumps({k: v for k, v in train_config.items() if k != "model"}, indent=2),
        "```",
        "Reproduce: `difflens world train` with the settings above, then `difflens world ship`.",
        "",
        "## Measured quality",
        measured,
        "",
        *table,
        "",
        footnote,
    ]
    if notes.strip():
        lines += ["", notes.strip()]
    (dest / CARD_FILE).write_text("\n".join(lines) + "\n")
    return quality
