"""The two shapes worlds as objects: what differs between the classic and the rich world, in one place.

A module that works in either world finds its `World` once (`get_world("rich")`; a `World` passes through) and
asks it: its scene sampler and captions, its vocabulary, its oracle and what that oracle reads (`object_fields`,
`scene_fields`, `reads_details`), how its generations are scored. Nothing else compares world names.

`CLASSIC` is the default of every function and never changes (files written before worlds existed are of it);
`RICH` is a superset: textured backgrounds, patterned and composite objects with named parts, up to three objects
(a classic scene is a valid rich scene that renders identically).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .oracle import SceneReading, read_classic_image
from .palette import PATTERNS, RICH_BACKGROUNDS, RICH_SHAPES, RICH_SIZES, TEXTURES
from .render import render_parts
from .rich import rich_caption, rich_words, sample_rich_scene
from .rich_oracle import read_rich_image
from .scene import BACKGROUNDS, SHAPES, SIZES, Scene, caption_for, classic_words, sample_classic_scene

@dataclass(frozen=True)
class World:
    """One shapes world: its vocabulary of attributes, how it draws and captions scenes, how its oracle reads them."""

    name: str
    backgrounds: tuple[str, ...]  # background colours
    shapes: tuple[str, ...]
    sizes: tuple[str, ...]  # every size a caption may name
    textures: tuple[str, ...]  # background textures ("plain" alone in the classic world)
    patterns: tuple[str, ...]  # object patterns ("solid" alone in the classic world)
    max_objects: int
    heldout_objects: tuple[int, ...]  # object counts its held-out prompts have (classic: single objects only)
    reads_details: bool  # its oracle reads textures, patterns and composite parts (readings, facts, labels carry them)
    object_fields: tuple[str, ...]  # what its oracle reads of an object besides its cell (judges, scores compare)
    scene_fields: tuple[str, ...]  # what its oracle reads of the scene besides the objects
    largest_object_score: bool  # single-object generations are scored on the largest object read (the classic card)
    sampler: Callable[..., Scene] = field(repr=False)  # (rng, split, n_objects) -> Scene
    captioner: Callable[[Scene, int], str] = field(repr=False)  # (scene, template) -> caption
    words: Callable[[], set[str]] = field(repr=False)  # every word its captions can contain
    reader: Callable[[np.ndarray], SceneReading] = field(repr=False)  # its oracle: RGB uint8 (H, W, 3) -> reading

    def sample_scene(self, rng: np.random.Generator, split: str = "train", n_objects: int | None = None) -> Scene:
        """One random scene; `split="heldout"` draws from the held-out combinations only."""
        return self.sampler(rng, split=split, n_objects=n_objects)

    def scenes(self, n: int, seed: int = 0, split: str = "train", n_objects: int | None = None) -> list[Scene]:
        """`n` scenes, a pure function of (n, seed, split, n_objects)."""
        rng = np.random.default_rng(seed)
        return [self.sample_scene(rng, split=split, n_objects=n_objects) for _ in range(n)]

    def prompts(self, n: int, seed: int = 0, split: str = "train") -> list[str]:
        """Captions of `n` seeded scenes: the default prompt set for capture."""
        return [s.caption for s in self.scenes(n, seed=seed, split=split)]

    def caption(self, scene: Scene, template: int = 0) -> str:
        return self.captioner(scene, template)

    def vocabulary(self) -> list[str]:
        """Every word a caption can contain, sorted: the embedded model's tokenizer vocabulary."""
        return sorted(self.words())

    def holds(self, scene: Scene) -> bool:
        """Whether every attribute of the scene is one this world has."""
        return (scene.texture in self.textures and scene.background in self.backgrounds
                and 1 <= len(scene.objects) <= self.max_objects
                and all(o.pattern in self.patterns and o.shape in self.shapes and o.size in self.sizes
                        for o in scene.objects))

    def read(self, image: np.ndarray) -> SceneReading:
        """The oracle's reading of an RGB uint8 image (H, W, 3) of this world. Objects are sorted by grid cell."""
        return self.reader(image)

    def describe(self, reading: SceneReading, geometry: bool = False) -> dict:
        """A reading's JSON form with what this world's oracle reads (`SceneReading.as_dict`)."""
        return reading.as_dict(rich=self.reads_details, geometry=geometry)

    def part_masks(self, scenes: list[Scene]) -> list[list[dict[str, np.ndarray]]] | None:
        """Rendered part masks per scene, per object ({part: bool (H, W)}), where the oracle reads parts; else None."""
        return [render_parts(s) for s in scenes] if self.reads_details else None


def _classic_caption(scene: Scene, template: int = 0) -> str:
    return caption_for(scene.background, scene.objects, template)


def _rich_vocabulary() -> set[str]:
    return classic_words() | rich_words()


CLASSIC = World("classic", backgrounds=tuple(BACKGROUNDS), shapes=SHAPES, sizes=SIZES, textures=("plain",),
                patterns=("solid",), max_objects=2, heldout_objects=(1,), reads_details=False,
                object_fields=("color", "shape", "size"), scene_fields=("background",),
                largest_object_score=True, sampler=sample_classic_scene, captioner=_classic_caption,
                words=classic_words, reader=read_classic_image)
RICH = World("rich", backgrounds=tuple(RICH_BACKGROUNDS), shapes=RICH_SHAPES, sizes=RICH_SIZES, textures=TEXTURES,
             patterns=PATTERNS, max_objects=3, heldout_objects=(1, 2, 3), reads_details=True,
             object_fields=("color", "pattern", "shape", "size"), scene_fields=("background", "texture"),
             largest_object_score=False, sampler=sample_rich_scene, captioner=rich_caption,
             words=_rich_vocabulary, reader=read_rich_image)
WORLDS = {w.name: w for w in (CLASSIC, RICH)}  # narrowest first
DEFAULT_WORLD = CLASSIC


def get_world(world: str | World) -> World:
    """The world of that name ("classic", "rich"); a `World` is returned as is."""
    if isinstance(world, World):
        return world
    if world not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    return WORLDS[world]


# by-name shorthands (`world` is a name or a World)
def sample_scene(rng: np.random.Generator, split: str = "train", n_objects: int | None = None,
                 world: str | World = "classic") -> Scene:
    return get_world(world).sample_scene(rng, split=split, n_objects=n_objects)


def sample_scenes(n: int, seed: int = 0, split: str = "train", n_objects: int | None = None,
                  world: str | World = "classic") -> list[Scene]:
    return get_world(world).scenes(n, seed=seed, split=split, n_objects=n_objects)


def world_prompts(n: int, seed: int = 0, split: str = "train", world: str | World = "classic") -> list[str]:
    return get_world(world).prompts(n, seed=seed, split=split)


def vocabulary(world: str | World = "classic") -> list[str]:
    return get_world(world).vocabulary()


__all__ = ["CLASSIC", "DEFAULT_WORLD", "RICH", "WORLDS", "World", "get_world", "sample_scene", "sample_scenes",
           "vocabulary", "world_prompts"]
