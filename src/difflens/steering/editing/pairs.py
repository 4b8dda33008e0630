"""Prompt pairs of the editing benchmark: building the fixed shapes-world files, and reading pair files.

A pair is a source prompt and a target prompt that differ in one thing, generated with the same seed. On the
shapes world each pair also carries both scenes, the edited object and the target value, so the oracle can
judge an edit. Categories (`CATEGORIES`; the classic world has the first seven, the rich world all nine):

    color       one object's colour changes                 attribute "color",      value: the new colour
    shape       one object's shape changes                  attribute "shape",      value: the new shape
    size        one object's size flips (rich: large/huge)  attribute "size",       value: the new size
    background  the background colour changes (texture kept) attribute "background", value: the new colour
    remove      a scene loses one object                    attribute "presence",   value: "absent"
    add         a scene gains one object                    attribute "presence",   value: "present"
    move        one object moves to a free grid cell        attribute "position",   value: the new cell
    pattern     one object's pattern changes (rich)         attribute "pattern",    value: the new pattern
    texture     the background texture changes (rich)       attribute "texture",    value: the new texture

`object` is the edited object's index in `source_scene["objects"]` (for `add`: in `target_scene["objects"]`;
for `background` and `texture`: None). Two files are shipped, each `make_pairs(world=...)` written by
`write_pairs` (regenerate with ``python -m difflens.steering.editing.pairs [--world rich]``):

  * `data/edit_pairs.jsonl` (classic world): one-object sources, 30 % two-object ones for attribute and move
    edits; remove goes from two objects to one, add from one to two.
  * `data/edit_pairs_rich.jsonl` (rich world): sources with one to three objects as the rich sampler draws
    them (remove from two or three, add to two or three), textured backgrounds, patterned and composite
    objects, sizes large and huge; objects placed by the rich sampler's rules without jitter (margins to the
    border and gaps between objects kept: an edit whose target would break them is not drawn).

Both use training combinations only, and the target caption keeps the source caption's template.

Two file formats are read (`read_pairs`), one JSON object a line:
  * difflens: {"id", "category", "seed", "source", "target", "source_scene", "target_scene", "object",
    "attribute", "value"}.
  * RIEBench / PIE-Bench: {"original_prompt", "editing_prompt", optional "mask" (an image path relative to
    the file, a 2-D 0/1 list, or PIE-Bench's run-length list over a 512x512 image), optional "editing_type"
    (RIEBench's category name; PIE-Bench's "editing_type_id" digit is named as PIE-Bench names it; "category"
    overrides both; none: "edit"), "seed", "id"}. No scenes: these are scored without the oracle, against the
    model's own generations of both prompts (`image_scores`, `learned_scores`); their masks are prepared as
    RIEBench prepares them (`image_scores.prepare_mask`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

# the classic categories first: each category's generator is seeded by its index here, so new ones go last
CATEGORIES = ("color", "shape", "size", "background", "remove", "add", "move", "pattern", "texture")
WORLD_CATEGORIES = {
    "classic": CATEGORIES[:7],
    "rich": ("color", "shape", "size", "pattern", "background", "texture", "remove", "add", "move"),
}
ATTRIBUTE_OF = {"color": "color", "shape": "shape", "size": "size", "background": "background",
                "remove": "presence", "add": "presence", "move": "position", "pattern": "pattern",
                "texture": "texture"}
OBJECT_ATTRIBUTES = ("color", "shape", "size", "position", "pattern")  # keys of a scene dict's objects
SCENE_ATTRIBUTES = ("background", "texture")  # edits of the whole background (`object` is None)
# rich-world attributes a scene dict leaves out at their classic value (`Scene.attributes()` omits them)
ATTRIBUTE_DEFAULTS = {"texture": "plain", "pattern": "solid"}
PAIRS_FILE = Path(__file__).with_name("data") / "edit_pairs.jsonl"
RICH_PAIRS_FILE = PAIRS_FILE.with_name("edit_pairs_rich.jsonl")
PAIRS_SEED = 20260413
PAIRS_PER_CATEGORY = 100
TWO_OBJECT_SHARE = 0.3  # classic: share of attribute / move edits made on a two-object scene (the other must stay)


def pairs_file(world: str = "classic") -> Path:
    """The shipped pairs file of a shapes world (what the benchmark runs on a model of that world)."""
    files = {"classic": PAIRS_FILE, "rich": RICH_PAIRS_FILE}
    if world not in files:
        raise ValueError(f"no shipped pairs for world {world!r}; worlds: {', '.join(files)}")
    return files[world]


@dataclass
class EditPair:
    """One benchmark pair. `source_scene` / `target_scene` are `Scene.attributes()` dicts (None: no oracle)."""

    id: str
    category: str
    source: str
    target: str
    seed: int = 0
    source_scene: dict | None = None
    target_scene: dict | None = None
    object: int | None = None
    attribute: str | None = None
    value: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) user mask (RIEBench files), any size

    @property
    def judged(self) -> bool:
        """Whether the oracle can score this pair (it has both scenes)."""
        return self.source_scene is not None and self.target_scene is not None

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("mask")
        return out


# ------------------------------------------------------------------ building the shapes-world files
class _ClassicWorld:
    """How pairs are drawn in the classic world: the rules (and generator draws) the shipped file was made with.

    A world gives `make_pairs` its values per attribute, how many objects a source has, its sampler, its
    training combinations, its caption templates and its layout rule; `_pair_for` is the same for both."""

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        """attribute -> the values an edit may pick, in the order the generator picks from."""
        from difflens.world.scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

        return {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS,
                "background": tuple(BACKGROUNDS)}

    def source_count(self, category: str, rng: np.random.Generator) -> int:
        """Objects of the source scene: two to remove one, one to add one, else mostly one."""
        if category == "remove":
            return 2
        if category == "add":
            return 1
        return 2 if rng.random() < TWO_OBJECT_SHARE else 1

    def sample(self, rng: np.random.Generator, n_objects: int):
        from difflens.world.worlds import CLASSIC

        return CLASSIC.sample_scene(rng, split="train", n_objects=n_objects)

    def allowed(self, obj) -> bool:
        """Whether an object is a training combination (its (colour, shape, position) is not held out)."""
        from difflens.world.scene import heldout_combinations

        return (obj.color, obj.shape, obj.position) not in heldout_combinations()

    def n_templates(self, n_objects: int) -> int:
        """Caption templates of an n-object scene (template i of n and m objects share a form where both exist)."""
        from difflens.world.scene import PAIR_TEMPLATES, SINGLE_TEMPLATES

        return len({1: SINGLE_TEMPLATES, 2: PAIR_TEMPLATES}.get(n_objects, ()))

    def caption(self, scene, template: int) -> str:
        from difflens.world.scene import caption_for

        return caption_for(scene.background, scene.objects, template)

    def layout(self, objects: tuple) -> tuple | None:
        """The objects without jitter (offset 0: every classic layout is valid)."""
        return tuple(replace(o, offset=(0.0, 0.0)) for o in objects)


class _RichWorld(_ClassicWorld):
    """How pairs are drawn in the rich world: its sampler's object counts, sizes and held-out triples, the
    three-object caption form, and layouts that keep the rich margins and gaps."""

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        from difflens.world.palette import PATTERNS, RICH_BACKGROUNDS, RICH_SHAPES, SAMPLED_SIZES, TEXTURES

        return {**super().values, "shape": RICH_SHAPES, "size": SAMPLED_SIZES, "pattern": PATTERNS,
                "background": tuple(RICH_BACKGROUNDS), "texture": TEXTURES}

    def source_count(self, category: str, rng: np.random.Generator) -> int:
        """One to three objects with the rich sampler's odds, restricted to two or three (remove) or one or two
        (add)."""
        from difflens.world.rich import OBJECT_COUNT_PROBABILITIES

        counts = {"remove": (2, 3), "add": (1, 2)}.get(category, (1, 2, 3))
        p = np.array([OBJECT_COUNT_PROBABILITIES[n - 1] for n in counts])
        return int(rng.choice(counts, p=p / p.sum()))

    def sample(self, rng: np.random.Generator, n_objects: int):
        from difflens.world.worlds import RICH

        return RICH.sample_scene(rng, split="train", n_objects=n_objects)

    def allowed(self, obj) -> bool:
        """Whether an object is a training combination (its (colour, pattern, shape) is not held out)."""
        from difflens.world.rich import rich_heldout_combinations

        return (obj.color, obj.pattern, obj.shape) not in rich_heldout_combinations()

    def n_templates(self, n_objects: int) -> int:
        from difflens.world.rich import TRIPLE_TEMPLATES

        return len(TRIPLE_TEMPLATES) if n_objects == 3 else super().n_templates(n_objects)

    def caption(self, scene, template: int) -> str:
        from difflens.world.rich import rich_caption

        return rich_caption(scene, template)

    def layout(self, objects: tuple) -> tuple | None:
        """The objects placed as the rich sampler places them, without jitter; None when two of them come closer
        than the sampler allows (the model never saw such a scene)."""
        from difflens.world.rich import objects_apart, place_object

        placed = tuple(place_object(o.shape, o.color, o.pattern, o.position, o.size) for o in objects)
        return placed if objects_apart(list(placed)) else None


_WORLDS = {"classic": _ClassicWorld(), "rich": _RichWorld()}


def _world(name: str):
    if name not in _WORLDS:
        raise ValueError(f"world must be one of {', '.join(_WORLDS)}, got {name!r}")
    return _WORLDS[name]


def _scene(world, background: str, texture: str, objects, template: int):
    """A Scene of the world laid out without jitter and captioned with `template`; None if its layout is invalid."""
    from difflens.world.scene import Scene

    objects = world.layout(tuple(objects))
    if objects is None:
        return None
    bare = Scene(background=background, objects=objects, texture=texture)
    return replace(bare, caption=world.caption(bare, template))


def _template_of(world, scene) -> int:
    """The template index a sampled scene's caption was written with (the target keeps it)."""
    return next(i for i in range(world.n_templates(len(scene.objects))) if world.caption(scene, i) == scene.caption)


def _pair_for(category: str, rng: np.random.Generator, world) -> tuple | None:
    """(source Scene, target Scene, object index, value) for one draw; None when the draw cannot be edited (no
    template of the target's object count, or, in the rich world, a target layout that breaks the gaps)."""
    drawn = world.sample(rng, world.source_count(category, rng))
    template = _template_of(world, drawn)
    src = _scene(world, drawn.background, drawn.texture, drawn.objects, template)
    if src is None:
        return None
    objs = list(src.objects)
    n = len(objs)
    i = int(rng.integers(n))
    o = objs[i]
    key = ATTRIBUTE_OF[category]
    target, edited, value = None, i, None
    if key in SCENE_ATTRIBUTES:
        value = str(rng.choice([v for v in world.values[key] if v != getattr(src, key)]))
        changed = replace(src, **{key: value})
        target, edited = _scene(world, changed.background, changed.texture, objs, template), None
    elif key in OBJECT_ATTRIBUTES:
        taken = {p.position for p in objs} if key == "position" else {getattr(o, key)}
        options = [v for v in world.values[key] if v not in taken and world.allowed(replace(o, **{key: v}))]
        if not options:
            return None
        value = str(rng.choice(options))
        objs[i] = replace(o, **{key: value})
        target = _scene(world, src.background, src.texture, objs, template)
    elif category == "remove":
        kept = objs[:i] + objs[i + 1:]
        if template >= world.n_templates(len(kept)):
            return None
        target, value = _scene(world, src.background, src.texture, kept, template), "absent"
    elif category == "add":
        if template >= world.n_templates(n + 1):  # e.g. the single-only template has no two-object form
            return None
        taken = {p.position for p in objs}
        new = next((e for e in world.sample(rng, n + 1).objects if e.position not in taken), None)
        if new is None:
            return None
        target, edited, value = _scene(world, src.background, src.texture, [*objs, new], template), n, "present"
    else:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return None if target is None else (src, target, edited, value)


def make_pairs(n_per_category: int = PAIRS_PER_CATEGORY, seed: int = PAIRS_SEED,
               categories: tuple[str, ...] | None = None, world: str = "classic") -> list[EditPair]:
    """The benchmark's shapes-world pairs of one world (`categories`: default every category of the world): a pure
    function of its arguments (training combinations only, no position jitter). Each category draws from its own
    generator (seed, category number), so adding a category leaves the others unchanged; each pair gets its own
    generation seed."""
    w = _world(world)
    categories = WORLD_CATEGORIES[world] if categories is None else tuple(categories)
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
        if category not in WORLD_CATEGORIES[world]:
            raise ValueError(f"the {world} world has no {category!r} edits; its categories: "
                             f"{', '.join(WORLD_CATEGORIES[world])}")
    pairs = []
    for category in categories:
        rng = np.random.default_rng([seed, CATEGORIES.index(category)])
        made = 0
        while made < n_per_category:
            got = _pair_for(category, rng, w)
            gen_seed = int(rng.integers(0, 2**31 - 1))
            if got is None:
                continue
            src, tgt, obj, value = got
            pairs.append(EditPair(id=f"{category}-{made:03d}", category=category, source=src.caption,
                                  target=tgt.caption, seed=gen_seed, source_scene=src.attributes(),
                                  target_scene=tgt.attributes(), object=obj, attribute=ATTRIBUTE_OF[category],
                                  value=value))
            made += 1
    return pairs


def write_pairs(pairs: list[EditPair], path: str | Path = PAIRS_FILE) -> Path:
    """Write pairs as JSON lines (atomically)."""
    from difflens.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(json.dumps(p.to_json()) + "\n" for p in pairs).encode())
    return path


# ------------------------------------------------------------------ reading and validating
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _known_values() -> dict[str, tuple[str, ...]]:
    """attribute -> every value a scene dict may give it: the rich world's (a superset of the classic world's),
    with every size a caption may name (the rich sampler draws large and huge only; classic scenes are small too)."""
    from difflens.world.palette import RICH_SIZES

    return {**_WORLDS["rich"].values, "size": RICH_SIZES}


def check_scene(scene: dict, where: str) -> None:
    """A shapes-world scene dict of either world ({"background", ["texture"], "objects": [{color, shape, size,
    position, [pattern]}]}, as `Scene.attributes()` writes it) names only known attributes and values, and holds
    one to three objects, each in its own cell."""
    known = _known_values()
    if not isinstance(scene, dict) or "background" not in scene or "objects" not in scene:
        raise ValueError(f"{where}: a scene needs 'background' and 'objects', got {scene!r}")
    extra = sorted(set(scene) - {"objects", *SCENE_ATTRIBUTES})
    if extra:
        raise ValueError(f"{where}: unknown scene attribute(s) {extra}; a scene has background, objects and "
                         f"optionally texture")
    for key in SCENE_ATTRIBUTES:
        if key in scene and scene[key] not in known[key]:
            raise ValueError(f"{where}: unknown {key} {scene[key]!r}; known: {', '.join(known[key])}")
    if not isinstance(scene["objects"], list) or not all(isinstance(o, dict) for o in scene["objects"]):
        raise ValueError(f"{where}: 'objects' must be a list of objects ({{color, shape, size, position}}), "
                         f"got {scene['objects']!r}")
    if not 1 <= len(scene["objects"]) <= 3:
        raise ValueError(f"{where}: a scene holds one to three objects, got {len(scene['objects'])}")
    for o in scene["objects"]:
        extra = sorted(set(o) - set(OBJECT_ATTRIBUTES))
        if extra:
            raise ValueError(f"{where}: object {o!r} has unknown attribute(s) {extra}; an object has "
                             f"{', '.join(OBJECT_ATTRIBUTES[:-1])} and optionally {OBJECT_ATTRIBUTES[-1]}")
        for key in OBJECT_ATTRIBUTES:
            if key not in o and key in ATTRIBUTE_DEFAULTS:  # an optional attribute left at its default
                continue
            if o.get(key) not in known[key]:
                raise ValueError(f"{where}: object {o!r} has unknown {key} {o.get(key)!r}; known: "
                                 f"{', '.join(known[key])}")
    cells = [o["position"] for o in scene["objects"]]
    if len(set(cells)) != len(cells):
        raise ValueError(f"{where}: two objects share a cell ({cells})")


def _with_defaults(scene: dict) -> dict:
    """A checked scene dict with the attributes it may leave out filled in (plain background, solid objects), so
    two dicts of one scene compare equal."""
    return {"texture": ATTRIBUTE_DEFAULTS["texture"], **scene,
            "objects": [{"pattern": ATTRIBUTE_DEFAULTS["pattern"], **o} for o in scene["objects"]]}


def _check_edit(p: EditPair, where: str) -> None:
    """The scenes differ exactly as the pair's category says."""
    if p.category not in CATEGORIES:
        raise ValueError(f"{where}: unknown category {p.category!r}; known: {', '.join(CATEGORIES)} "
                         f"(pairs without scenes may use any category)")
    check_scene(p.source_scene, f"{where} source_scene")
    check_scene(p.target_scene, f"{where} target_scene")
    if p.attribute != ATTRIBUTE_OF[p.category]:
        raise ValueError(f"{where}: a {p.category} pair edits attribute {ATTRIBUTE_OF[p.category]!r}, got {p.attribute!r}")
    s, t = _with_defaults(p.source_scene), _with_defaults(p.target_scene)
    so, to, key = s["objects"], t["objects"], p.attribute
    if key in SCENE_ATTRIBUTES:
        ok = s[key] != p.value and t == {**s, key: p.value}
    else:
        for k in SCENE_ATTRIBUTES:
            if s[k] != t[k]:
                raise ValueError(f"{where}: the {k} changes in a {p.category} pair")
        base = to if p.category == "add" else so
        if not isinstance(p.object, int) or not 0 <= p.object < len(base):
            raise ValueError(f"{where}: object index {p.object!r} is not an object of the "
                             f"{'target' if p.category == 'add' else 'source'} scene")
        if p.category == "remove":
            ok = p.value == "absent" and to == [o for j, o in enumerate(so) if j != p.object]
        elif p.category == "add":
            ok = p.value == "present" and so == [o for j, o in enumerate(to) if j != p.object]
        else:
            changed = dict(so[p.object], **{key: p.value})
            ok = (len(so) == len(to) and so[p.object][key] != p.value
                  and to == [changed if j == p.object else o for j, o in enumerate(so)])
    if not ok:
        raise ValueError(f"{where}: source and target scenes do not differ by the stated {p.category} edit "
                         f"(object {p.object}, {p.attribute} -> {p.value})")


# PIE-Bench's editing_type_id digits (its mapping_file.json), named as its paper names the ten edit types
PIE_BENCH_TYPES = {"0": "random", "1": "change_object", "2": "add_object", "3": "delete_object",
                   "4": "change_content", "5": "change_pose", "6": "change_color", "7": "change_material",
                   "8": "change_background", "9": "change_style"}


def riebench_category(row: dict) -> str:
    """A RIEBench / PIE-Bench row's category: "category", else RIEBench's "editing_type", else PIE-Bench's
    "editing_type_id" by name, else "edit"."""
    if row.get("category"):
        return str(row["category"])
    if row.get("editing_type"):
        return str(row["editing_type"])
    type_id = row.get("editing_type_id")
    if type_id is not None and str(type_id) != "":
        return PIE_BENCH_TYPES.get(str(type_id), f"type_{type_id}")
    return "edit"


def _decode_mask(mask, base: Path, where: str) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, str):
        from PIL import Image

        path = Path(mask) if Path(mask).is_absolute() else base / mask
        if not path.exists():
            raise ValueError(f"{where}: mask image {path} does not exist")
        arr = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        return arr
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 1 and len(arr) % 2 == 0:  # PIE-Bench run-length encoding: (start, length) over 512x512
        flat = np.zeros(512 * 512, dtype=np.float32)
        for start, length in arr.reshape(-1, 2).astype(int):
            flat[start: start + length] = 1
        return flat.reshape(512, 512)
    raise ValueError(f"{where}: mask must be an image path, a 2-D list or a run-length list, got shape {arr.shape}")


def read_pairs(path: str | Path | None = None, vocabulary: set[str] | None = None) -> list[EditPair]:
    """Read a pairs file (difflens or RIEBench format, see the module doc) and validate every pair.

    `vocabulary`: words the model knows (the embedded model's tokenizer); a prompt with another word is a
    ValueError naming the line. Errors name the file and line; nothing is generated before this passes."""
    path = PAIRS_FILE if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    pairs: list[EditPair] = []
    seen: set[str] = set()
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        if "original_prompt" in row or "editing_prompt" in row:  # RIEBench / PIE-Bench
            if not row.get("original_prompt") or not row.get("editing_prompt"):
                raise ValueError(f"{where}: a RIEBench pair needs both 'original_prompt' and 'editing_prompt'")
            p = EditPair(id=str(row.get("id", f"pair-{line_no}")), category=riebench_category(row),
                         source=str(row["original_prompt"]).replace("[", "").replace("]", ""),
                         target=str(row["editing_prompt"]).replace("[", "").replace("]", ""),
                         seed=row.get("seed", 42), mask=_decode_mask(row.get("mask"), path.parent, where))
        else:
            missing = [k for k in ("category", "source", "target") if k not in row]
            if missing:
                raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
            known = {f for f in EditPair.__dataclass_fields__ if f != "mask"}
            extra = sorted(set(row) - known - {"mask"})
            if extra:
                raise ValueError(f"{where}: unknown field(s) {', '.join(extra)}")
            p = EditPair(**{k: v for k, v in row.items() if k in known},
                         mask=_decode_mask(row.get("mask"), path.parent, where))
            p.id = str(p.id) if "id" in row else f"{p.category}-{line_no}"
            if (p.source_scene is None) != (p.target_scene is None):
                raise ValueError(f"{where}: give both source_scene and target_scene, or neither")
            if p.judged:
                _check_edit(p, where)
        if not isinstance(p.seed, int) or isinstance(p.seed, bool):
            raise ValueError(f"{where}: seed must be an integer, got {p.seed!r}")
        for which in ("source", "target"):
            if not isinstance(getattr(p, which), str) or not getattr(p, which).strip():
                raise ValueError(f"{where}: the {which} prompt must be a non-empty string, got {getattr(p, which)!r}")
        if p.id in seen:
            raise ValueError(f"{where}: duplicate pair id {p.id!r}")
        seen.add(p.id)
        if vocabulary is not None:
            for which, text in (("source", p.source), ("target", p.target)):
                unknown = sorted({w for w in _words(text) if w not in vocabulary})
                if unknown:
                    raise ValueError(f"{where}: unknown word(s) {unknown} in the {which} prompt {text!r}; the model "
                                     f"knows: {' '.join(sorted(vocabulary))}")
        pairs.append(p)
    if not pairs:
        raise ValueError(f"pairs file {path} holds no pairs")
    return pairs


def model_vocabulary(adapter) -> set[str] | None:
    """The words a model's tokenizer accepts, where it has a closed vocabulary (the embedded model); else None."""
    tok = getattr(getattr(adapter, "pipe", None), "tokenizer", None)
    words = getattr(tok, "words", None)
    return {w for w in words if re.fullmatch(r"[a-z]+", w)} if words else None


def check_prompts(adapter, pairs: list[EditPair]) -> None:
    """Tokenise every prompt with the model's own tokenizer (the embedded one rejects unknown words and
    over-long prompts) before anything is generated."""
    tok = getattr(getattr(adapter, "pipe", None), "tokenizer", None)
    if tok is None:
        return
    for p in pairs:
        for which, text in (("source", p.source), ("target", p.target)):
            try:
                tok([text])
            except ValueError as err:
                raise ValueError(f"pair {p.id} ({which} prompt): {err}") from None


def main(argv: list[str] | None = None) -> None:
    """Write a world's shipped pairs file (``python -m difflens.steering.editing.pairs [--world rich]``)."""
    import argparse

    parser = argparse.ArgumentParser(description="regenerate the editing benchmark's shipped pairs file")
    parser.add_argument("--world", choices=tuple(WORLD_CATEGORIES), default="classic",
                        help="shapes world of the pairs (default: classic; its file is data/edit_pairs.jsonl)")
    world = parser.parse_args(argv).world
    out = write_pairs(make_pairs(world=world), pairs_file(world))
    print(f"wrote {sum(1 for _ in out.open())} pairs to {out}")


if __name__ == "__main__":
    main()
