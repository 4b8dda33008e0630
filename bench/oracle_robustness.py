"""How well the oracle reads renders damaged the way generations are (ragged edges, soft corners).

Usage: python bench/oracle_robustness.py [--n 800] [--world classic|rich|both]
Prints per-attribute accuracy per damage level, for single-object classic scenes (the classic oracle) and for
rich scenes of one to three objects (the rich oracle: every rich attribute, and the IoU of composite objects'
parts); the last line is JSON.
"""

import argparse
import json
import time

import numpy as np

from difflens.world import render, render_parts, sample_scenes
from difflens.world.perturb import roughen_edges, soften
from difflens.world.scoring import score_images, score_rich_images

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=800)
parser.add_argument("--world", choices=("classic", "rich", "both"), default="both")
args = parser.parse_args()

# (label, kind, level)
DAMAGES = ([("clean", "clean", None)] + [(f"ragged edges {p:.0%}", "ragged edges", p) for p in (0.1, 0.2, 0.3)]
           + [(f"blur sigma {s}", "blur sigma", s) for s in (0.6, 0.8, 1.0)])
COLUMNS = {
    "classic": ("shape", "color", "size", "position", "background"),
    "rich": ("shape", "color", "pattern", "size", "position", "count", "background", "texture", "part_iou"),
}


def damaged(kind, level, scene, image, masks, rng):
    if kind == "ragged edges":
        return roughen_edges(scene, image, masks, level, rng)
    if kind == "blur sigma":
        return soften(image, level)
    return image


def run(world: str) -> dict:
    if world == "classic":
        scenes = sample_scenes(args.n, seed=5, n_objects=1)
    else:
        scenes = sample_scenes(args.n, seed=5, world="rich")
    renders = [render(s) for s in scenes]
    parts = [render_parts(s) for s in scenes] if world == "rich" else None
    print(f"\n{world} world, {args.n} scenes" + (" (1-3 objects)" if world == "rich" else " (one object)"))
    print(f"{'damage':18s} " + " ".join(f"{c[:9]:>9s}" for c in COLUMNS[world]) + "   ms/image")
    results = {}
    for name, kind, level in DAMAGES:
        rng = np.random.default_rng(0)
        images = np.stack([damaged(kind, level, s, im, m, rng) for s, (im, m) in zip(scenes, renders)])
        start = time.time()
        scores = score_images(scenes, images) if world == "classic" else score_rich_images(scenes, images, parts)
        ms = 1000 * (time.time() - start) / len(scenes)
        results[name] = {k: round(v, 3) for k, v in scores.items()}
        cells = [scores[c] if c == "part_iou" else scores[f"{c}_acc"] for c in COLUMNS[world]]
        print(f"{name:18s} " + " ".join(f"{v:9.3f}" for v in cells) + f"   {ms:6.1f}")
    return results


worlds = ("classic", "rich") if args.world == "both" else (args.world,)
out = {"n": args.n}
for w in worlds:
    out[w] = run(w)
print(json.dumps(out))
