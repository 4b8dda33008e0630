"""The rich world's vocabulary of attributes and its colours: what a rich scene can be made of.

Every rich colour is chosen so that a pixel's nearest palette entry names what it belongs to: object colours
and their shades (the second colour of a pattern) lie far from every background's line between its base
colour and its second tone (the two colours of a texture; gradients blend along that line). The classic
palette (`scene.COLORS`, `scene.BACKGROUNDS`) is kept as is and included.
"""

from __future__ import annotations

from .patterns import PATTERNS, TEXTURES
from .scene import BACKGROUNDS, COLORS, SHAPES, SIZES

# background colour -> (base RGB, second-tone RGB); the classic three keep their base colour
BACKGROUND_TONES = {
    "white": (BACKGROUNDS["white"], (200, 200, 200)),
    "black": (BACKGROUNDS["black"], (55, 55, 55)),
    "gray": (BACKGROUNDS["gray"], (170, 170, 170)),
    "pink": ((250, 200, 215), (215, 150, 170)),
    "cyan": ((165, 225, 230), (105, 190, 200)),
}
RICH_BACKGROUNDS = {name: tones[0] for name, tones in BACKGROUND_TONES.items()}
SHADE_FACTOR = 0.65  # a pattern's second colour: the object's colour darkened by this factor
SHADES = {name: tuple(int(round(SHADE_FACTOR * v)) for v in rgb) for name, rgb in COLORS.items()}

# composite shapes and their named parts, top part first (parts are stacked vertically, see `parts.py`)
COMPOSITES = {"house": ("roof", "body"), "snowman": ("head", "body"), "tree": ("crown", "trunk")}
RICH_SHAPES = (*SHAPES, *COMPOSITES)
RICH_SIZES = (*SIZES, "huge")
SAMPLED_SIZES = ("large", "huge")  # what the rich sampler draws ("small" stays valid in captions)



def palette_tones() -> list[tuple[str, str, tuple[int, int, int]]]:
    """Every flat colour a rich image is drawn with, as (name, kind, RGB): object colours (kind "object"), their
    pattern shades ("shade"), background base colours ("background"), then their second tones ("second")."""
    return ([(c, "object", rgb) for c, rgb in COLORS.items()] + [(c, "shade", rgb) for c, rgb in SHADES.items()]
            + [(b, "background", tones[0]) for b, tones in BACKGROUND_TONES.items()]
            + [(b, "second", tones[1]) for b, tones in BACKGROUND_TONES.items()])


__all__ = ["BACKGROUND_TONES", "COMPOSITES", "PATTERNS", "RICH_BACKGROUNDS", "RICH_SHAPES", "RICH_SIZES",
           "SAMPLED_SIZES", "SHADES", "SHADE_FACTOR", "TEXTURES", "palette_tones"]
