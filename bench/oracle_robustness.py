"""How well the oracle reads renders damaged the way generations are (ragged edges, soft corners).

Usage: python bench/oracle_robustness.py [--n 800]
Prints per-attribute accuracy per damage level; the last line is JSON (shape accuracy per level).
"""

import argparse
import json
import time

import numpy as np

from difflens.world import render, sample_scenes
from difflens.world.perturb import roughen_edges, soften
from difflens.world.scoring import score_images

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=800)
args = parser.parse_args()

scenes = sample_scenes(args.n, seed=5, n_objects=1)
renders = [render(s) for s in scenes]
# (label, kind, level)
DAMAGES = ([("clean", "clean", None)] + [(f"ragged edges {p:.0%}", "ragged edges", p) for p in (0.1, 0.2, 0.3)]
           + [(f"blur sigma {s}", "blur sigma", s) for s in (0.6, 0.8, 1.0)])


def damaged(kind, level, scene, image, masks, rng):
    if kind == "ragged edges":
        return roughen_edges(scene, image, masks, level, rng)
    if kind == "blur sigma":
        return soften(image, level)
    return image


results = {}
for name, kind, level in DAMAGES:
    rng = np.random.default_rng(0)
    images = np.stack([damaged(kind, level, s, im, m, rng) for s, (im, m) in zip(scenes, renders)])
    start = time.time()
    scores = score_images(scenes, images)
    results[name] = {k: round(v, 3) for k, v in scores.items()}
    print(f"{name:18s} shape {scores['shape_acc']:.3f}  colour {scores['color_acc']:.3f}  "
          f"size {scores['size_acc']:.3f}  position {scores['position_acc']:.3f}  "
          f"({1000 * (time.time() - start) / len(scenes):.1f} ms/image)")
print(json.dumps({"n": args.n, "shape_acc": {k: v["shape_acc"] for k, v in results.items()}}))
