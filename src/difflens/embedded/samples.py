"""A grid of an embedded rich-world model's samples, each with its caption and what the oracle read back
(docs/rich_model_samples.png: `difflens world samples`).

Row 1: four fixed single-object prompts (the shipped-model test's). Rows 2-4: held-out scenes of 1, 2 and 3
objects (seed 0). Under each image: the right object count (count) and the share of the prompt's objects drawn
with every named attribute in the right cell (bound), from `score_scene_images`, so a reader can check the
measured numbers against the pictures.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..world import sample_scenes
from ..world.caption import parse_caption
from ..world.scoring import score_scene_images
from .pipeline import DEFAULT_STEPS, ShapesPipeline

FIXED = ["a huge striped red house in the center on a white dotted background",
         "a large dotted blue snowman in the center on a gray checked background",
         "a large checked green tree in the center on a pink striped background",
         "a huge yellow diamond in the center on a cyan gradient background"]


def sample_grid(pipe: ShapesPipeline, out: str | Path, num_steps: int = DEFAULT_STEPS,
                title: str = "samples") -> list[dict]:
    """Write the 4 x 4 grid to `out` (PNG); returns per image {"caption", "count_acc", "bound_acc"}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = [parse_caption(p) for p in FIXED] + [
        s for n in (1, 2, 3) for s in sample_scenes(4, seed=0, split="heldout", n_objects=n, world="rich")]
    images = pipe.generate([s.caption for s in scenes], num_steps=num_steps, seeds=0)
    fig, axes = plt.subplots(4, 4, figsize=(11, 14.5))
    rows = []
    for ax, scene, image in zip(axes.flat, scenes, images):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        score = score_scene_images([scene], image[None])
        rows.append({"caption": scene.caption, "count_acc": float(score["count_acc"]),
                     "bound_acc": float(score["bound_acc"])})
        ax.set_xlabel(f"{textwrap.fill(scene.caption, 38)}\ncount {'ok' if score['count_acc'] else 'wrong'}, "
                      f"bound {score['bound_acc']:.2f}", fontsize=7)
    fig.suptitle(f"{title}: fixed prompts, then held-out scenes of 1, 2, 3 objects (seed 0, guidance "
                 f"{pipe.resolve_guidance(None)})", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return rows
