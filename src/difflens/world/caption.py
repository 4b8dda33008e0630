"""Read a caption back into its scene: every caption form of both worlds, unknown words a clear error.

Grammar (words as the embedded model's tokenizer splits them: lower case, punctuation dropped):

    caption := objects "on a" background "background"
             | "a picture of" objects "on a" background "background"
             | background "background with" objects
    objects := object ("a" object)* with an "and" before the last one (a comma before the others)
    object  := "a" size [pattern] colour shape position-phrase
    background := colour [texture]

A parsed scene has no jitter (offset 0); `caption(parse(c)) == c` for every caption the worlds write.
"""

from __future__ import annotations

import re

from .palette import COMPOSITES, PATTERNS, RICH_BACKGROUNDS, RICH_SHAPES, RICH_SIZES, TEXTURES
from .scene import COLORS, POSITION_PHRASES, ObjectSpec, Scene
from .worlds import RICH, WORLDS

_PHRASE_POSITION = {tuple(phrase.split()): pos for pos, phrase in POSITION_PHRASES.items()}


def caption_words(text: str) -> list[str]:
    """The words of a caption as the embedded model's tokenizer sees them."""
    return re.findall(r"[a-z]+", text.lower())


def _object(words: list[str], text: str) -> ObjectSpec:
    def bad(why):
        return ValueError(f"cannot read object {' '.join(words)!r} in caption {text!r}: {why}")

    if len(words) < 4:
        raise bad("an object is '<size> [pattern] <colour> <shape> <where>'")
    size, rest = words[0], words[1:]
    if size not in RICH_SIZES:
        raise bad(f"it starts with {size!r}, not a size ({', '.join(RICH_SIZES)})")
    pattern = "solid"
    if rest[0] in PATTERNS:
        pattern, rest = rest[0], rest[1:]
    if len(rest) < 3 or rest[0] not in COLORS or rest[1] not in RICH_SHAPES:
        raise bad("expected a colour then a shape after the size (and pattern)")
    position = _PHRASE_POSITION.get(tuple(rest[2:]))
    if position is None:
        raise bad(f"{' '.join(rest[2:])!r} is not a position phrase ({', '.join(POSITION_PHRASES.values())})")
    return ObjectSpec(shape=rest[1], color=rest[0], size=size, position=position, pattern=pattern)


def _objects(words: list[str], text: str) -> tuple[ObjectSpec, ...]:
    if not words or words[0] != "a":
        raise ValueError(f"cannot read caption {text!r}: the objects must start with 'a'")
    groups: list[list[str]] = []
    for w in words:
        if w == "a":
            groups.append([])
        else:
            groups[-1].append(w)
    if len(groups) > 3:
        raise ValueError(f"cannot read caption {text!r}: at most three objects")
    # "and" ends the last group but one ("a X and a Y", "a X, a Y and a Z"); no other group
    if len(groups) > 1:
        if not groups[-2] or groups[-2][-1] != "and":
            raise ValueError(f"cannot read caption {text!r}: the last object must follow 'and'")
        groups[-2].pop()
    return tuple(_object(g, text) for g in groups)


def _background(words: list[str], text: str) -> tuple[str, str]:
    if len(words) == 1 and words[0] in RICH_BACKGROUNDS:
        return words[0], "plain"
    if len(words) == 2 and words[0] in RICH_BACKGROUNDS and words[1] in TEXTURES and words[1] != "plain":
        return words[0], words[1]
    raise ValueError(f"cannot read background {' '.join(words)!r} in caption {text!r}: expected '<colour> [texture]' "
                     f"({', '.join(RICH_BACKGROUNDS)}; {', '.join(t for t in TEXTURES if t != 'plain')})")


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (offsets 0, `caption` = the text). Raises ValueError on unknown words or forms."""
    words = caption_words(text)
    known = set(RICH.vocabulary())
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in caption {text!r}; the shapes world knows: {' '.join(sorted(known))}")
    if "background" not in words:
        raise ValueError(f"cannot read caption {text!r}: it names no background ('... on a <colour> background')")
    at = words.index("background")
    if words[at + 1: at + 2] == ["with"]:  # "<bg> background with a ..."
        bg_words, obj_words = words[:at], words[at + 2:]
    else:  # "[a picture of] a ... on a <bg> background"
        if at != len(words) - 1 or "on" not in words:
            raise ValueError(f"cannot read caption {text!r}: expected '... on a <colour> background' or "
                             f"'<colour> background with ...'")
        on = len(words) - 1 - words[::-1].index("on")
        if words[on + 1: on + 2] != ["a"]:
            raise ValueError(f"cannot read caption {text!r}: expected 'on a <colour> background'")
        bg_words, obj_words = words[on + 2: at], words[:on]
        if obj_words[:3] == ["a", "picture", "of"]:
            obj_words = obj_words[3:]
    background, texture = _background(bg_words, text)
    return Scene(background=background, objects=_objects(obj_words, text), caption=text, texture=texture)


def caption_world(text: str) -> str:
    """The name of the narrowest world whose scenes the caption describes: "classic" for a plain classic background
    with one or two solid classic objects of classic sizes, else "rich"."""
    return scene_world(parse_caption(text))


def scene_world(scene: Scene) -> str:
    """The name of the narrowest world that holds every attribute of the scene (`World.holds`; the widest when none
    does)."""
    return next((w for w in WORLDS.values() if w.holds(scene)), RICH).name


__all__ = ["COMPOSITES", "caption_words", "caption_world", "parse_caption", "scene_world"]
