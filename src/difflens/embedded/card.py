"""Ship trained weights into the package with a model card that states how they were made and how good they are."""

from __future__ import annotations

import json
from pathlib import Path

from .pipeline import WEIGHTS_DIR, WEIGHTS_FILE, ShapesPipeline
from .quality import measure_quality

CARD_FILE = "MODEL_CARD.md"
QUALITY_FILE = "quality.json"
_PREDICTION = {
    "x": "the transformer outputs the clean image x_0; the sampler's velocity is (x_t - x_0) / t "
         "and training uses the velocity loss",
    "velocity": "the transformer outputs the velocity noise - x_0 directly",
}


def ship(pipe: ShapesPipeline, train_config: dict, dest: str | Path | None = None, n: int = 512,
         num_steps: int | None = None, notes: str = "") -> dict:
    """Write fp16 weights, measure held-out quality on what was written, and write the model card.

    `dest` defaults to the package's shipped-weights folder. `notes` (markdown: training history, known
    limitations) are appended to the generated card, so a re-ship does not lose what a person wrote."""
    dest = Path(dest or WEIGHTS_DIR)
    pipe.save_pretrained(dest)
    shipped = ShapesPipeline.from_pretrained(dest)  # measure the fp16 weights actually shipped
    kwargs = {} if num_steps is None else {"num_steps": num_steps}
    quality = measure_quality(shipped, n=n, **kwargs)
    (dest / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
    cfg = shipped.config
    params = sum(p.numel() for p in shipped.transformer.parameters())
    text_params = sum(p.numel() for p in shipped.text_encoder.parameters())
    size_mb = (dest / WEIGHTS_FILE).stat().st_size / 2**20
    if cfg.latent_channels:
        ae_params = sum(p.numel() for p in shipped.autoencoder.parameters())
        tokens = (f"- image {cfg.image_size}x{cfg.image_size} RGB -> convolutional autoencoder (x4 downsampling, "
                  f"tanh latents, {ae_params / 1e6:.2f} M parameters, trained first, then frozen) -> "
                  f"{cfg.grid_size}x{cfg.grid_size} = {cfg.grid_size**2} image tokens of {cfg.latent_channels} "
                  f"channels (row-major)")
    else:
        tokens = (f"- image {cfg.image_size}x{cfg.image_size} RGB, {cfg.patch_size}x{cfg.patch_size} patches -> "
                  f"{cfg.grid_size}x{cfg.grid_size} = {cfg.grid_size**2} image tokens of {cfg.patch_channels} "
                  f"channels (row-major)")
    lines = [
        "# Embedded shapes-world model",
        "",
        "A small text-to-image model of the procedural shapes world, built on diffusers' `FluxTransformer2DModel`",
        "(double- and single-stream blocks, like FLUX.1) with a word-level text encoder trained jointly, with the",
        "rectified-flow objective. It is difflens' default model.",
        "",
        "## Architecture",
        tokens,
        f"- transformer width {cfg.width} ({cfg.num_heads} heads x {cfg.head_dim}), {cfg.num_double_blocks} double blocks, "
        f"{cfg.num_single_blocks} single blocks, RoPE axes {list(cfg.axes_dims_rope)}; {params / 1e6:.2f} M parameters",
        f"- text encoder: {len(cfg.vocab)}-word vocabulary, {cfg.text_layers} layers, {cfg.max_text_len} tokens; "
        f"{text_params / 1e6:.2f} M parameters",
        f"- prediction: {_PREDICTION[cfg.prediction]}",
        f"- weights: `{WEIGHTS_FILE}`, fp16, {size_mb:.1f} MB; EMA of the training weights",
        "",
        "## Training",
        "```json",
        json.dumps({k: v for k, v in train_config.items() if k != "model"}, indent=2),
        "```",
        "Reproduce: `difflens world train` with the settings above, then `difflens world ship`.",
        "",
        "## Measured quality",
        f"{quality['n']} single-object prompts from held-out (colour, shape, position) combinations, "
        f"{quality['steps']} Euler steps, guidance scale {quality['guidance']} (the model's default), scored by the",
        "oracle (`difflens.world.read_image`) on the largest object found:",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in quality.items() if k.endswith("_acc")],
        "",
        "`one_object_acc` is the share of images where the oracle found exactly one object (stray specks count).",
    ]
    if notes.strip():
        lines += ["", notes.strip()]
    (dest / CARD_FILE).write_text("\n".join(lines) + "\n")
    return quality
