"""Scores of one edit: the oracle's judgement (success, preservation, clean), pixel preservation outside the
edit mask (PSNR against the unedited source image; the other reference scores are `image_scores` and
`learned_scores`), and bootstrap intervals over pairs.

A scene is compared as *facts*: the background, the number of objects, and for each of the 9 grid cells
whether an object is there and its colour, shape and size (the largest object read in the cell; oracle readings
and scene dicts give the same facts). The facts are what the world's oracle reads (`World.scene_fields`,
`World.object_fields`): in the rich world also the background's texture and each cell's object pattern; classic
facts are exactly as they always were. The edited image should
read as the target scene:

* success      the edited facts hold: the object's new colour / shape / size / pattern, the new background
               colour or texture, the cell emptied (remove), an object in the new cell (add), the new cell
               filled and the old one emptied (move);
* preservation every fact the edit does not touch equals the target's (= the source's): the other objects,
               the background, the edited object's other attributes (for a move: its colour, shape and size,
               and in the rich world its pattern, in the new cell, or in the old one if it did not move; for
               add: the added object's attributes are not counted here);
* clean        every fact equals the target's (success and preservation, and for add the added object drawn
               as asked).
"""

from __future__ import annotations

import numpy as np

from difflens.world.worlds import WORLDS, World, get_world

from .image_scores import PIXEL_SCORES, PSNR_CAP, psnr
from .learned_scores import LEARNED_SCORES
from .pairs import ATTRIBUTE_DEFAULTS, SCENE_ATTRIBUTES

ANY_OBJECT_FIELDS = tuple(dict.fromkeys(f for w in WORLDS.values() for f in w.object_fields))  # in either world
ORACLE_SCORES = ("success", "preservation", "clean")
SCORES = (*ORACLE_SCORES, *PIXEL_SCORES, *LEARNED_SCORES)  # every per-pair score `summarise` aggregates
__all__ = ["PSNR_CAP", "SCORES", "bootstrap_ci", "facts", "judge", "psnr_outside", "summarise"]


def object_fields(world: str | World = "classic") -> tuple[str, ...]:
    """The object attributes the facts of a world hold."""
    return get_world(world).object_fields


def facts(scene, world: str | World = "classic") -> dict:
    """Facts of a scene dict ({"background", ["texture"], "objects": [{color, shape, size, position, [pattern]}]})
    or an oracle `SceneReading`: {("background",): ..., ("count",): n, (cell, "present"|"color"|"shape"|"size"):
    ...}; `world="rich"` adds ("texture",) and (cell, "pattern") (absent from a dict: plain, solid)."""
    from difflens.world.scene import POSITIONS

    world = get_world(world)
    fields = world.object_fields
    if isinstance(scene, dict):
        whole = {f: scene[f] if f in scene else ATTRIBUTE_DEFAULTS[f] for f in world.scene_fields}
        objects = [(o["position"], {f: o.get(f, ATTRIBUTE_DEFAULTS.get(f)) for f in fields}, 0)
                   for o in scene["objects"]]
    else:
        whole = {f: getattr(scene, f) for f in world.scene_fields}
        objects = [(o.position, {f: getattr(o, f) for f in fields}, o.area) for o in scene.objects]
    out: dict = {**{(f,): v for f, v in whole.items()}, ("count",): len(objects)}
    largest: dict = {}
    for cell, obj, area in objects:
        if cell not in largest or area > largest[cell][1]:
            largest[cell] = (obj, area)
    for cell in POSITIONS:
        obj = largest.get(cell, (None,))[0]
        out[(cell, "present")] = obj is not None
        for f in fields:
            out[(cell, f)] = None if obj is None else obj[f]
    return out


def _cell_keys(cell: str) -> list:
    """Every fact of one cell in either world (keys a world's facts lack are simply never compared)."""
    return [(cell, f) for f in ("present", *ANY_OBJECT_FIELDS)]


def edit_keys(pair) -> tuple[list, list]:
    """(keys that define success, keys left out of preservation) for a judged pair; the same in both worlds."""
    cat, s, t = pair.category, pair.source_scene, pair.target_scene
    if pair.attribute in SCENE_ATTRIBUTES:  # background colour, texture
        return [(pair.attribute,)], [(pair.attribute,)]
    if cat == "add":
        cell = t["objects"][pair.object]["position"]
        return [(cell, "present")], [("count",), *_cell_keys(cell)]
    cell = s["objects"][pair.object]["position"]
    if cat == "remove":
        return [(cell, "present")], [("count",), *_cell_keys(cell)]
    if cat == "move":
        new = t["objects"][pair.object]["position"]
        # the moved object's own looks (colour, shape, size, pattern) are checked by `judge` wherever it ends up
        return [(cell, "present"), (new, "present")], [*_cell_keys(cell), *_cell_keys(new)]
    return [(cell, cat)], [(cell, cat)]


def judge(pair, reading, world: str | World = "classic") -> dict:
    """{"success", "preservation", "clean"} (bools) of an edited image's oracle reading against the pair, with the
    facts of `world` (the model's world: a rich model is also judged on patterns and textures)."""
    want, got = facts(pair.target_scene, world), facts(reading, world)
    success_keys, edited = edit_keys(pair)
    success = all(got[k] == want[k] for k in success_keys)
    preservation = all(got[k] == want[k] for k in want if k not in edited)
    if pair.category == "move":  # the moved object keeps its looks, in the new cell or (failed move) the old one
        old = pair.source_scene["objects"][pair.object]
        new = pair.target_scene["objects"][pair.object]["position"]
        cell = new if got[(new, "present")] else old["position"]
        looks = object_fields(world)
        preservation = preservation and all(got[(cell, f)] == old.get(f, ATTRIBUTE_DEFAULTS.get(f)) for f in looks)
    clean = all(got[k] == want[k] for k in want)
    return {"success": bool(success), "preservation": bool(preservation), "clean": bool(clean)}


def faithful(scene: dict, reading, world: str | World = "classic") -> bool:
    """The oracle reads the image as exactly this scene (a generation that draws its prompt), in `world`'s facts."""
    return facts(scene, world) == facts(reading, world)


def psnr_outside(edited_HWC: np.ndarray, source_HWC: np.ndarray, mask_HW: np.ndarray | None) -> float:
    """PSNR (dB, 8-bit peak) of the edited image against the unedited source over pixels outside `mask_HW`
    (None: the whole image); pixel-identical regions score `PSNR_CAP`, an empty region NaN."""
    return psnr(edited_HWC, source_HWC, None if mask_HW is None else ~np.asarray(mask_HW, bool))


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over pairs (NaNs dropped; (nan, nan) when none are left)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarise(per_pair: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Means and 95 % bootstrap intervals of each score over a list of per-pair score dicts (a score that is
    None (or absent) for every pair, e.g. success without the oracle, stays None)."""
    out: dict = {"n": len(per_pair)}
    for key in SCORES:
        vals = [p[key] for p in per_pair if p.get(key) is not None]
        if not vals:
            out[key] = out[f"{key}_lo"] = out[f"{key}_hi"] = None
            continue
        arr = np.asarray(vals, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        out[key] = float(finite.mean()) if len(finite) else None
        lo, hi = bootstrap_ci(arr, n_boot, seed)
        out[f"{key}_lo"], out[f"{key}_hi"] = (None if np.isnan(lo) else lo), (None if np.isnan(hi) else hi)
    return out
