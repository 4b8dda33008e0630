"""How well the oracle reads renders damaged the way generations are (ragged edges, soft corners).

Per damage level, per-attribute accuracy of the oracle on single-object classic scenes (the classic oracle) and
on rich scenes of one to three objects (the rich oracle: every rich attribute, and the IoU of composite objects'
parts). The model cards quote it: `difflens world oracle-robustness --n 800`.
"""

from __future__ import annotations

import time

import numpy as np

from .perturb import roughen_edges, soften
from .render import render
from .scoring import score_images, score_scene_images
from .worlds import get_world

# (label, kind, level)
DAMAGES = ([("clean", "clean", None)] + [(f"ragged edges {p:.0%}", "ragged edges", p) for p in (0.1, 0.2, 0.3)]
           + [(f"blur sigma {s}", "blur sigma", s) for s in (0.6, 0.8, 1.0)])
COLUMNS = {
    "classic": ("shape", "color", "size", "position", "background"),
    "rich": ("shape", "color", "pattern", "size", "position", "count", "background", "texture", "part_iou"),
}


def damaged(kind: str, level, scene, image_HWC: np.ndarray, masks, rng: np.random.Generator) -> np.ndarray:
    """`image_HWC` with one damage of `DAMAGES` applied."""
    if kind == "ragged edges":
        return roughen_edges(scene, image_HWC, masks, level, rng)
    if kind == "blur sigma":
        return soften(image_HWC, level)
    return image_HWC


def oracle_robustness(world: str = "classic", n: int = 800, seed: int = 5) -> dict:
    """{damage label: {score name: value, ..., "ms_per_image": oracle time}} on `n` seeded scenes of `world`
    (classic: one object each; rich: one to three)."""
    w = get_world(world)
    scenes = w.scenes(n, seed=seed, n_objects=1 if w.largest_object_score else None)
    renders = [render(s) for s in scenes]
    parts = w.part_masks(scenes)  # once, not per damage
    results = {}
    for label, kind, level in DAMAGES:
        rng = np.random.default_rng(0)
        images = np.stack([damaged(kind, level, s, im, m, rng) for s, (im, m) in zip(scenes, renders)])
        start = time.time()
        scores = score_images(scenes, images) if w.largest_object_score else score_scene_images(scenes, images, w, parts)
        results[label] = {**{k: round(v, 3) for k, v in scores.items()},
                          "ms_per_image": round(1000 * (time.time() - start) / n, 2)}
    return results


def format_robustness(world: str, results: dict) -> str:
    """A table: one row per damage, one column per attribute of `COLUMNS[world]`, and the oracle's ms per image."""
    lines = [f"{'damage':18s} " + " ".join(f"{c[:9]:>9s}" for c in COLUMNS[world]) + "   ms/image"]
    for label, scores in results.items():
        cells = [scores[c] if c == "part_iou" else scores[f"{c}_acc"] for c in COLUMNS[world]]
        lines.append(f"{label:18s} " + " ".join(f"{v:9.3f}" for v in cells) + f"   {scores['ms_per_image']:6.1f}")
    return "\n".join(lines)
