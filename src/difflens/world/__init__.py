"""The shapes world: procedural captioned scenes, their renders, and the oracle that reads images."""

from .oracle import ObjectReading, SceneReading, read_image
from .render import render
from .scene import (BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ObjectSpec, Scene, heldout_combinations,
                    sample_scene, sample_scenes, vocabulary, world_prompts)

__all__ = [
    "BACKGROUNDS", "COLORS", "POSITIONS", "SHAPES", "SIZES", "ObjectSpec", "Scene", "ObjectReading", "SceneReading",
    "heldout_combinations", "read_image", "render", "sample_scene", "sample_scenes", "vocabulary", "world_prompts",
]
