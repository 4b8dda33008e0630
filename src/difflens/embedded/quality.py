"""Measure how well an embedded model draws what its prompt says (held-out prompts, scored by the oracle)."""

from __future__ import annotations

import numpy as np

from ..world.scoring import score_generations
from ..world.worlds import get_world
from .pipeline import DEFAULT_STEPS, ShapesPipeline


def measure_quality(pipe: ShapesPipeline, n: int = 512, num_steps: int = DEFAULT_STEPS, seed: int = 1234,
                    batch_size: int = 64, split: str = "heldout", n_objects: int = 1, world: str | None = None) -> dict:
    """Generate `n` images of `n_objects`-object prompts of `world` (default: the model's) and score them.

    Scored the world's way (`world.scoring.score_generations`): single-object classic scenes keep the shipped
    model card's measure (the largest object read against the prompt's); otherwise every object is matched by grid
    cell, with `count_acc` (the right number of objects) and `bound_acc` (each object's attributes all right). A
    world without held-out prompts of `n_objects` objects (the classic one holds out single objects only) takes
    them from the training distribution.
    """
    world = get_world(world or getattr(pipe.config, "world", "classic"))
    if n_objects not in world.heldout_objects:
        split = "train"
    scenes = world.scenes(n, seed=seed, split=split, n_objects=n_objects)
    images = np.concatenate([
        pipe.generate([s.caption for s in scenes[i: i + batch_size]], num_steps=num_steps, seeds=seed * 100_000 + i)
        for i in range(0, n, batch_size)
    ])
    scores = score_generations(scenes, images, world)
    return {**scores, "steps": num_steps, "guidance": pipe.config.guidance_scale, "n": n, "split": split,
            "objects": n_objects, "world": world.name}
