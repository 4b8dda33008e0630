"""The rich world: seeded scenes with textured backgrounds and up to three large, patterned, possibly composite objects.

Why: in the classic world ~95 % of image tokens are flat background and objects carry little beyond colour, so
a dictionary has few concepts to find. Here most tokens carry a nameable concept: a background colour and
texture, an object's colour, pattern, shape and (for a house, snowman or tree) its part.

Rich scenes use the classic types (`Scene`, `ObjectSpec`, with `texture` and `pattern` set) and the classic
caption forms, plus a three-object form; `caption.parse_caption` reads every caption back into its scene.
Objects sit in distinct cells of the 3x3 grid, are shifted (through their offset) to keep a margin from the
image border, and never come closer than ``MIN_GAP`` pixels to each other, so the oracle can tell them apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .palette import COMPOSITES, PATTERNS, RICH_BACKGROUNDS, RICH_SHAPES, RICH_SIZES, SAMPLED_SIZES, TEXTURES
from .scene import (COLORS, PAIR_TEMPLATES, POSITION_PHRASES, POSITIONS, SINGLE_TEMPLATES, ObjectSpec, Scene,
                    seeded_subset)

TRIPLE_TEMPLATES = (
    "a {obj}, a {obj2} and a {obj3} on a {bg} background",
    "{bg} background with a {obj}, a {obj2} and a {obj3}",
)
OBJECT_COUNT_PROBABILITIES = (0.3, 0.35, 0.35)  # one, two, three objects
BORDER_MARGIN = 2  # px (at 64 px) between an object and the image border
MIN_GAP = 3  # px (at 64 px) of background at least between two objects
MAX_TRIES = 200
HELDOUT_FRACTION = 0.1
_SIZE = 64  # layouts are checked at 64 px; offsets are in 64 px units like the classic world's


def rich_heldout_combinations() -> frozenset[tuple[str, str, str]]:
    """(colour, pattern, shape) triples reserved for evaluation: a fixed, seeded ~10 % of all."""
    return seeded_subset([(c, p, s) for c in COLORS for p in PATTERNS for s in RICH_SHAPES], HELDOUT_FRACTION, 20261124)


_HELDOUT = rich_heldout_combinations()
_HELDOUT_LIST = sorted(_HELDOUT)


def rich_words() -> set[str]:
    """Words rich captions add to the classic vocabulary."""
    return {*RICH_BACKGROUNDS, *TEXTURES, *PATTERNS, *RICH_SHAPES, *RICH_SIZES} - {"plain", "solid"}


def rich_caption(scene: Scene, template: int = 0) -> str:
    """The caption of a rich scene: the classic forms for one or two objects, a three-object form, all with the
    background's texture named after its colour and each object's pattern before its colour (unless plain/solid)."""
    n = len(scene.objects)
    templates = {1: SINGLE_TEMPLATES, 2: PAIR_TEMPLATES, 3: TRIPLE_TEMPLATES}.get(n)
    if templates is None:
        raise ValueError(f"a rich scene has one to three objects, got {n}")
    phrases = [o.phrase() for o in scene.objects]
    return templates[template % len(templates)].format(
        obj=phrases[0], obj2=phrases[min(1, n - 1)], obj3=phrases[-1], bg=scene.background_phrase)


def _pixel_extent(obj: ObjectSpec, pad: int = 24) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel indices the object covers at 64 px, beyond the image border too."""
    from .render import object_geometry, shape_inside

    cy, cx, radius = object_geometry(obj.cell, obj.offset, obj.size, _SIZE)
    y, x = np.mgrid[-pad:_SIZE + pad, -pad:_SIZE + pad].astype(np.float32) + 0.5
    inside = shape_inside(obj.shape, y - cy, x - cx, radius)
    rows, cols = np.nonzero(inside.any(axis=1))[0] - pad, np.nonzero(inside.any(axis=0))[0] - pad
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def place_object(shape: str, color: str, pattern: str, position: str, size: str,
                 jitter: tuple[float, float] = (0.0, 0.0)) -> ObjectSpec:
    """An object at `position` moved by `jitter` px, shifted by whole pixels to keep ``BORDER_MARGIN`` from the
    image border (the sampler draws a ±1 px jitter; the editing benchmark places objects without one)."""
    obj = ObjectSpec(shape=shape, color=color, size=size, position=position, offset=jitter, pattern=pattern)
    top, bottom, left, right = _pixel_extent(obj)
    last = _SIZE - 1 - BORDER_MARGIN
    dy = max(0, BORDER_MARGIN - top) - max(0, bottom - last)
    dx = max(0, BORDER_MARGIN - left) - max(0, right - last)
    if dy or dx:
        obj = ObjectSpec(shape, color, size, position, (jitter[0] + dy, jitter[1] + dx), pattern)
    return obj


def objects_apart(objects: list[ObjectSpec]) -> bool:
    """Whether every two objects are at least ``MIN_GAP`` px of background apart."""
    from .render import object_mask

    masks = [object_mask(o, _SIZE) for o in objects]
    for i, a in enumerate(masks):
        grown = ndimage.binary_dilation(a, structure=np.ones((3, 3)), iterations=MIN_GAP)
        if any((grown & b).any() for b in masks[i + 1:]):
            return False
    return True


def sample_rich_scene(rng: np.random.Generator, split: str = "train", n_objects: int | None = None) -> Scene:
    """One random rich scene. `split="heldout"`: every object's (colour, pattern, shape) is a held-out triple;
    `"train"`: none is."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n_objects is None:
        n_objects = int(rng.choice(3, p=OBJECT_COUNT_PROBABILITIES)) + 1
    if n_objects not in (1, 2, 3):
        raise ValueError(f"a rich scene has one to three objects, got {n_objects}")
    background = str(rng.choice(list(RICH_BACKGROUNDS)))
    texture = str(rng.choice(TEXTURES))
    for attempt in range(MAX_TRIES):
        positions = rng.choice(len(POSITIONS), size=n_objects, replace=False)
        objects = []
        for p in positions:
            if split == "heldout":
                color, pattern, shape = _HELDOUT_LIST[int(rng.integers(len(_HELDOUT_LIST)))]
            else:
                while True:
                    color, pattern = str(rng.choice(list(COLORS))), str(rng.choice(PATTERNS))
                    shape = str(rng.choice(RICH_SHAPES))
                    if (color, pattern, shape) not in _HELDOUT:
                        break
            # after many failed layouts, fall back to the smaller size so a layout is always found
            size = "large" if attempt >= MAX_TRIES // 2 else str(rng.choice(SAMPLED_SIZES))
            jitter = tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=2))
            objects.append(place_object(shape, color, pattern, POSITIONS[int(p)], size, jitter))
        if objects_apart(objects):
            break
    else:  # pragma: no cover - large objects in non-adjacent cells always fit
        raise RuntimeError("no rich layout found")
    scene = Scene(background=background, objects=tuple(objects), texture=texture)
    template = int(rng.integers({1: len(SINGLE_TEMPLATES), 2: len(PAIR_TEMPLATES), 3: len(TRIPLE_TEMPLATES)}[n_objects]))
    return Scene(background, scene.objects, caption=rich_caption(scene, template), texture=texture)


__all__ = ["COMPOSITES", "POSITION_PHRASES", "TRIPLE_TEMPLATES", "rich_caption", "rich_heldout_combinations",
           "rich_words", "sample_rich_scene"]
