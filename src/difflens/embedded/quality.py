"""Measure how well an embedded model draws what its prompt says (held-out prompts, scored by the oracle)."""

from __future__ import annotations

import numpy as np

from ..world import render_parts, sample_scenes
from ..world.scoring import score_images, score_scene_images
from .pipeline import DEFAULT_STEPS, ShapesPipeline


def measure_quality(pipe: ShapesPipeline, n: int = 512, num_steps: int = DEFAULT_STEPS, seed: int = 1234,
                    batch_size: int = 64, split: str = "heldout", n_objects: int = 1, world: str | None = None) -> dict:
    """Generate `n` images of `n_objects`-object prompts of `world` (default: the model's) and score them.

    Single-object classic scenes keep the shipped model card's measure (`score_images`: the largest object read
    against the prompt's); otherwise every object is matched by grid cell (`score_scene_images`), with
    `count_acc` (the right number of objects) and `bound_acc` (each object's attributes all right). The classic
    world holds out single objects only, so its multi-object prompts come from the training distribution.
    """
    world = world or getattr(pipe.config, "world", "classic")
    if world == "classic" and n_objects > 1:
        split = "train"
    scenes = sample_scenes(n, seed=seed, split=split, n_objects=n_objects, world=world)
    images = np.concatenate([
        pipe.generate([s.caption for s in scenes[i: i + batch_size]], num_steps=num_steps, seeds=seed * 100_000 + i)
        for i in range(0, n, batch_size)
    ])
    if world == "classic" and n_objects == 1:
        scores = score_images(scenes, images)
    else:
        parts = [render_parts(s) for s in scenes] if world == "rich" else None
        scores = score_scene_images(scenes, images, world, parts)
    return {**scores, "steps": num_steps, "guidance": pipe.config.guidance_scale, "n": n, "split": split,
            "objects": n_objects, "world": world}
