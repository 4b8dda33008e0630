"""The shapes world: a seeded procedural generator of captioned scenes with known ground truth.

A scene is a background colour plus one or two objects, each with a shape, colour, size and a
cell of a 3x3 grid. Captions come from a few templates and name every attribute, so a
generation can be scored against its prompt by the oracle.

Two worlds share these types. The *classic* world (the default everywhere) is the one above and never
changes: the shipped model, stores and tests depend on its exact scenes and captions. The *rich* world
(`rich.py`, `world="rich"`) is a superset: textured backgrounds, patterned and composite objects, up to
three larger objects; a classic scene is a valid rich scene that renders identically. `worlds.py` holds both
worlds as objects (`World`: sampler, captions, vocabulary, oracle); this module is the classic world's parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {  # object colours, RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SIZES = ("small", "large")
# 3x3 grid cells, row-major; each with the phrase captions use for it.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
SINGLE_TEMPLATES = (
    "a {obj} on a {bg} background",
    "{bg} background with a {obj}",
    "a picture of a {obj} on a {bg} background",
)
PAIR_TEMPLATES = (
    "a {obj} and a {obj2} on a {bg} background",
    "{bg} background with a {obj} and a {obj2}",
)
PAIR_PROBABILITY = 0.3  # share of two-object scenes in the training split
HELDOUT_FRACTION = 0.1  # share of (colour, shape, position) combinations never seen in training


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    position: str
    offset: tuple[float, float] = (0.0, 0.0)  # jitter of the centre, in pixels (dy, dx)
    pattern: str = "solid"  # rich world: solid | striped | dotted | checked (captions omit "solid")

    def phrase(self) -> str:
        pattern = "" if self.pattern == "solid" else f"{self.pattern} "
        return f"{self.size} {pattern}{self.color} {self.shape} {POSITION_PHRASES[self.position]}"

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the object's cell in the 3x3 grid."""
        return divmod(POSITIONS.index(self.position), 3)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ObjectSpec, ...]
    caption: str = field(default="")
    texture: str = "plain"  # rich world: plain | striped | dotted | checked | gradient (captions omit "plain")

    @property
    def background_phrase(self) -> str:
        """What captions call the background: its colour, then its texture unless plain ("pink striped")."""
        return self.background if self.texture == "plain" else f"{self.background} {self.texture}"

    def attributes(self) -> dict:
        """Every attribute by name; rich-world ones (texture, pattern) only where they differ from the classic."""
        out = {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position,
                 **({"pattern": o.pattern} if o.pattern != "solid" else {})} for o in self.objects
            ],
        }
        if self.texture != "plain":
            out["texture"] = self.texture
        return out


def heldout_combinations() -> frozenset[tuple[str, str, str]]:
    """(colour, shape, position) triples reserved for evaluation: a fixed, seeded ~10 % of all."""
    return seeded_subset([(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS], HELDOUT_FRACTION, 20261123)


def seeded_subset(items: list, fraction: float, seed: int) -> frozenset:
    """A fixed, seeded share of `items` (rounded): the held-out combinations of a world."""
    picked = np.random.default_rng(seed).choice(len(items), size=int(round(fraction * len(items))), replace=False)
    return frozenset(items[i] for i in picked)


_HELDOUT = heldout_combinations()
_HELDOUT_LIST = sorted(_HELDOUT)


def _sample_object(rng: np.random.Generator, position: str) -> ObjectSpec:
    """A training object at `position`: any (colour, shape) whose combination with it is not held out."""
    while True:
        color = str(rng.choice(list(COLORS)))
        shape = str(rng.choice(SHAPES))
        if (color, shape, position) not in _HELDOUT:
            break
    return _with_size_and_jitter(rng, shape, color, position)


def _with_size_and_jitter(rng: np.random.Generator, shape: str, color: str, position: str) -> ObjectSpec:
    size = str(rng.choice(SIZES))
    offset = tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=2))
    return ObjectSpec(shape=shape, color=color, size=size, position=position, offset=offset)


def caption_for(background: str, objects: tuple[ObjectSpec, ...], template: int = 0) -> str:
    templates = SINGLE_TEMPLATES if len(objects) == 1 else PAIR_TEMPLATES
    t = templates[template % len(templates)]
    return t.format(obj=objects[0].phrase(), obj2=objects[-1].phrase(), bg=background)


def sample_classic_scene(rng: np.random.Generator, split: str = "train", n_objects: int | None = None,
                         pair_probability: float = PAIR_PROBABILITY) -> Scene:
    """One random classic scene. `split="heldout"` draws single objects from the held-out combinations only.
    (`worlds.sample_scene` picks the world by name.)"""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n_objects is None:
        n_objects = 2 if (split == "train" and rng.random() < pair_probability) else 1
    if n_objects not in (1, 2):
        raise ValueError(f"a scene has one or two objects, got {n_objects}")
    if split == "heldout":
        if n_objects != 1:
            raise ValueError("held-out scenes have a single object")
        color, shape, position = _HELDOUT_LIST[int(rng.integers(len(_HELDOUT_LIST)))]
        objects = (_with_size_and_jitter(rng, shape, color, position),)
    else:
        positions = rng.choice(len(POSITIONS), size=n_objects, replace=False)
        objects = tuple(_sample_object(rng, POSITIONS[int(p)]) for p in positions)
    background = str(rng.choice(list(BACKGROUNDS)))
    template = int(rng.integers(len(SINGLE_TEMPLATES if n_objects == 1 else PAIR_TEMPLATES)))
    return Scene(background=background, objects=objects, caption=caption_for(background, objects, template))


def classic_words() -> set[str]:
    """Every word a classic caption can contain: what the shipped model was trained with (its config stores it)."""
    words: set[str] = set()
    for text in (*SINGLE_TEMPLATES, *PAIR_TEMPLATES, *POSITION_PHRASES.values()):
        words.update(w for w in text.split() if not w.startswith("{"))
    words.update(SHAPES, COLORS, BACKGROUNDS, SIZES)
    return words


def __getattr__(name):
    """The by-name functions moved to `worlds.py` (which imports this module); old imports from here still work."""
    if name in ("sample_scene", "sample_scenes", "world_prompts", "vocabulary"):
        from . import worlds

        return getattr(worlds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
