"""A grid of an embedded rich-world model's samples, each with its caption and what the oracle read back.

    python bench/model_samples.py [--weights DIR] [--guidance G] [--out docs/rich_model_samples.png]

`--weights`: a model folder (default: the shipped `embedded-rich`) or a `world train` folder (its latest EMA
checkpoint).

Row 1: four fixed single-object prompts (the shipped-model test's). Rows 2-4: held-out scenes of 1, 2 and 3
objects (seed 0). Under each image: the right object count (count) and the share of the prompt's objects drawn
with every named attribute in the right cell (bound), from `score_scene_images`; so a reader can check the
measured numbers against the pictures.
"""

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from difflens.embedded.pipeline import SHIPPED_WEIGHTS  # noqa: E402
from difflens.embedded.train import load_trained  # noqa: E402
from difflens.world import sample_scenes  # noqa: E402
from difflens.world.caption import parse_caption  # noqa: E402
from difflens.world.scoring import score_scene_images  # noqa: E402

FIXED = ["a huge striped red house in the center on a white dotted background",
         "a large dotted blue snowman in the center on a gray checked background",
         "a large checked green tree in the center on a pink striped background",
         "a huge yellow diamond in the center on a cyan gradient background"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS["rich"]))
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--out", default="docs/rich_model_samples.png")
    args = ap.parse_args()
    pipe = load_trained(args.weights).use_guidance(args.guidance)
    scenes = [parse_caption(p) for p in FIXED] + [
        s for n in (1, 2, 3) for s in sample_scenes(4, seed=0, split="heldout", n_objects=n, world="rich")]
    images = pipe.generate([s.caption for s in scenes], seeds=0)
    fig, axes = plt.subplots(4, 4, figsize=(11, 14.5))
    for ax, scene, image in zip(axes.flat, scenes, images):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        score = score_scene_images([scene], image[None])
        ax.set_xlabel(f"{textwrap.fill(scene.caption, 38)}\ncount {'ok' if score['count_acc'] else 'wrong'}, "
                      f"bound {score['bound_acc']:.2f}", fontsize=7)
    fig.suptitle(f"{Path(args.weights).name}: fixed prompts, then held-out scenes of 1, 2, 3 objects "
                 f"(seed 0, guidance {pipe.resolve_guidance(None)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
