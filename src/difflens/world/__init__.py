"""The shapes world: procedural captioned scenes, their renders, and the oracle that reads images.

Two worlds: the classic one (the default of every function) and the rich one (`world="rich"`: textured
backgrounds, patterned and composite objects with named parts, up to three objects), a superset of the classic.
Each is a `World` object (`worlds.py`: `CLASSIC`, `RICH`, `get_world(name)`) that carries what differs.
"""

from .caption import caption_world, parse_caption, scene_world
from .oracle import ObjectReading, SceneReading, read_image
from .palette import (BACKGROUND_TONES, COMPOSITES, PATTERNS, RICH_BACKGROUNDS, RICH_SHAPES, RICH_SIZES, SHADES,
                      TEXTURES)
from .render import render, render_parts
from .rich import rich_caption, rich_heldout_combinations, sample_rich_scene
from .rich_oracle import read_rich_image
from .scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ObjectSpec, Scene, heldout_combinations
from .worlds import CLASSIC, RICH, WORLDS, World, get_world, sample_scene, sample_scenes, vocabulary, world_prompts

__all__ = [
    "BACKGROUNDS", "COLORS", "POSITIONS", "SHAPES", "SIZES", "ObjectSpec", "Scene", "ObjectReading", "SceneReading",
    "heldout_combinations", "read_image", "render", "sample_scene", "sample_scenes", "vocabulary", "world_prompts",
    "BACKGROUND_TONES", "COMPOSITES", "PATTERNS", "RICH_BACKGROUNDS", "RICH_SHAPES", "RICH_SIZES", "SHADES", "TEXTURES",
    "CLASSIC", "RICH", "WORLDS", "World", "get_world",
    "caption_world", "parse_caption", "read_rich_image", "render_parts", "rich_caption",
    "rich_heldout_combinations", "sample_rich_scene", "scene_world",
]
