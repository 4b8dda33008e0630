"""Measure how well an embedded model draws what its prompt says (held-out single-object prompts)."""

from __future__ import annotations

import numpy as np

from ..world import sample_scenes
from ..world.scoring import score_images
from .pipeline import DEFAULT_STEPS, ShapesPipeline


def measure_quality(pipe: ShapesPipeline, n: int = 512, num_steps: int = DEFAULT_STEPS, seed: int = 1234,
                    batch_size: int = 64, split: str = "heldout") -> dict:
    """Generate `n` single-object images from held-out prompts and score them with the oracle."""
    scenes = sample_scenes(n, seed=seed, split=split, n_objects=1)
    images = np.concatenate([
        pipe.generate([s.caption for s in scenes[i: i + batch_size]], num_steps=num_steps, seeds=seed * 100_000 + i)
        for i in range(0, n, batch_size)
    ])
    return {**score_images(scenes, images), "steps": num_steps, "guidance": pipe.config.guidance_scale, "n": n,
            "split": split}
