"""Prompt pairs of the editing benchmark: building the fixed shapes-world file, and reading pair files.

A pair is a source prompt and a target prompt that differ in one thing, generated with the same seed. On the
shapes world each pair also carries both scenes, the edited object and the target value, so the oracle can
judge an edit. Categories (`CATEGORIES`):

    color       one object's colour changes            attribute "color",      value: the new colour
    shape       one object's shape changes             attribute "shape",      value: the new shape
    size        one object's size flips                attribute "size",       value: the new size
    background  the background colour changes          attribute "background", value: the new background
    remove      a two-object scene loses one object    attribute "presence",   value: "absent"
    add         a one-object scene gains one object    attribute "presence",   value: "present"
    move        one object moves to another grid cell  attribute "position",   value: the new cell

`object` is the edited object's index in `source_scene["objects"]` (for `add`: in `target_scene["objects"]`;
for `background`: None). The shipped file `data/edit_pairs.jsonl` is `make_pairs()` written by `write_pairs`
(regenerate with ``python -m difflens.steering.bench.pairs``); it only uses the classic world's words.

Two file formats are read (`read_pairs`), one JSON object a line:
  * difflens: {"id", "category", "seed", "source", "target", "source_scene", "target_scene", "object",
    "attribute", "value"}.
  * RIEBench / PIE-Bench: {"original_prompt", "editing_prompt", optional "mask" (an image path relative to
    the file, a 2-D 0/1 list, or PIE-Bench's run-length list over a 512x512 image), optional "category",
    "seed", "id"}. No scenes: these are scored without the oracle (pixel preservation only).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CATEGORIES = ("color", "shape", "size", "background", "remove", "add", "move")
ATTRIBUTE_OF = {"color": "color", "shape": "shape", "size": "size", "background": "background",
                "remove": "presence", "add": "presence", "move": "position"}
PAIRS_FILE = Path(__file__).with_name("data") / "edit_pairs.jsonl"
PAIRS_SEED = 20260413
PAIRS_PER_CATEGORY = 100
TWO_OBJECT_SHARE = 0.3  # share of attribute / move edits made on a two-object scene (the other object must stay)


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


# ------------------------------------------------------------------ building the shapes-world file
def _scene(rng, n_objects: int):
    from difflens.world.scene import sample_scene

    return sample_scene(rng, split="train", n_objects=n_objects)


def _allowed(color: str, shape: str, position: str) -> bool:
    from difflens.world.scene import heldout_combinations

    return (color, shape, position) not in heldout_combinations()


def _caption(background: str, objects, template: int) -> str:
    from difflens.world.scene import caption_for

    return caption_for(background, tuple(objects), template)


def _pair_for(category: str, rng: np.random.Generator) -> tuple | None:
    """(source Scene, target Scene, object index, value) for one draw; None when the draw cannot be edited."""
    from dataclasses import replace

    from difflens.world.scene import BACKGROUNDS, COLORS, PAIR_TEMPLATES, POSITIONS, SHAPES, SINGLE_TEMPLATES, Scene

    def scene(bg, objects, template):
        objects = tuple(replace(o, offset=(0.0, 0.0)) for o in objects)
        return Scene(background=bg, objects=objects, caption=_caption(bg, objects, template))

    if category in ("remove",):
        src = _scene(rng, 2)
    elif category == "add":
        src = _scene(rng, 1)
    else:
        src = _scene(rng, 2 if rng.random() < TWO_OBJECT_SHARE else 1)
    objs = list(src.objects)
    n = len(objs)
    # the template of the source caption, recovered so the target keeps it (one/two-object templates pair up)
    templates = SINGLE_TEMPLATES if n == 1 else PAIR_TEMPLATES
    template = next(i for i in range(len(templates)) if _caption(src.background, objs, i) == src.caption)
    src = scene(src.background, objs, template)
    objs = list(src.objects)
    i = int(rng.integers(n))
    o = objs[i]
    if category in ("color", "shape", "size"):
        choices = {"color": list(COLORS), "shape": list(SHAPES), "size": ["small", "large"]}[category]
        options = [v for v in choices if v != getattr(o, category)
                   and _allowed(v if category == "color" else o.color, v if category == "shape" else o.shape,
                                o.position)]
        value = str(rng.choice(options))
        objs[i] = replace(o, **{category: value})
        return src, scene(src.background, objs, template), i, value
    if category == "background":
        value = str(rng.choice([b for b in BACKGROUNDS if b != src.background]))
        return src, scene(value, objs, template), None, value
    if category == "move":
        taken = {p.position for p in objs}
        options = [p for p in POSITIONS if p not in taken and _allowed(o.color, o.shape, p)]
        value = str(rng.choice(options))
        objs[i] = replace(o, position=value)
        return src, scene(src.background, objs, template), i, value
    if category == "remove":
        if template >= len(SINGLE_TEMPLATES):
            return None
        kept = [objs[1 - i]]
        return src, scene(src.background, kept, template), i, "absent"
    if category == "add":
        if template >= len(PAIR_TEMPLATES):  # the single-only template has no two-object form
            return None
        extra = _scene(rng, 2).objects
        new = next((e for e in extra if e.position != o.position), None)
        if new is None:
            return None
        return src, scene(src.background, [o, new], template), 1, "present"
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def make_pairs(n_per_category: int = PAIRS_PER_CATEGORY, seed: int = PAIRS_SEED,
               categories: tuple[str, ...] = CATEGORIES) -> list[EditPair]:
    """The benchmark's shapes-world pairs: a pure function of its arguments (classic world, training
    combinations only, no position jitter). Each category draws from its own generator (seed, category number),
    so adding a category leaves the others unchanged; each pair gets its own generation seed."""
    pairs = []
    for c, category in enumerate(categories):
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
        rng = np.random.default_rng([seed, CATEGORIES.index(category)])
        made = 0
        while made < n_per_category:
            got = _pair_for(category, rng)
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


def check_scene(scene: dict, where: str) -> None:
    """A shapes-world scene dict names only known values, each object in its own cell."""
    from difflens.world.scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

    if not isinstance(scene, dict) or "background" not in scene or "objects" not in scene:
        raise ValueError(f"{where}: a scene needs 'background' and 'objects', got {scene!r}")
    if scene["background"] not in BACKGROUNDS:
        raise ValueError(f"{where}: unknown background {scene['background']!r}; known: {', '.join(BACKGROUNDS)}")
    known = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}
    if not isinstance(scene["objects"], list) or not all(isinstance(o, dict) for o in scene["objects"]):
        raise ValueError(f"{where}: 'objects' must be a list of objects ({{color, shape, size, position}}), "
                         f"got {scene['objects']!r}")
    for o in scene["objects"]:
        for key, values in known.items():
            if o.get(key) not in values:
                raise ValueError(f"{where}: object {o!r} has unknown {key} {o.get(key)!r}; known: {', '.join(values)}")
    cells = [o["position"] for o in scene["objects"]]
    if len(set(cells)) != len(cells):
        raise ValueError(f"{where}: two objects share a cell ({cells})")


def _check_edit(p: EditPair, where: str) -> None:
    """The scenes differ exactly as the pair's category says."""
    if p.category not in CATEGORIES:
        raise ValueError(f"{where}: unknown category {p.category!r}; known: {', '.join(CATEGORIES)} "
                         f"(pairs without scenes may use any category)")
    s, t = p.source_scene, p.target_scene
    check_scene(s, f"{where} source_scene")
    check_scene(t, f"{where} target_scene")
    so, to = s["objects"], t["objects"]
    if p.attribute != ATTRIBUTE_OF[p.category]:
        raise ValueError(f"{where}: a {p.category} pair edits attribute {ATTRIBUTE_OF[p.category]!r}, got {p.attribute!r}")
    if p.category == "background":
        ok = so == to and t["background"] == p.value != s["background"]
    else:
        if s["background"] != t["background"]:
            raise ValueError(f"{where}: the background changes in a {p.category} pair")
        base = to if p.category == "add" else so
        if not isinstance(p.object, int) or not 0 <= p.object < len(base):
            raise ValueError(f"{where}: object index {p.object!r} is not an object of the "
                             f"{'target' if p.category == 'add' else 'source'} scene")
        if p.category == "remove":
            ok = p.value == "absent" and to == [o for j, o in enumerate(so) if j != p.object]
        elif p.category == "add":
            ok = p.value == "present" and so == [o for j, o in enumerate(to) if j != p.object]
        else:
            key = p.attribute
            changed = dict(so[p.object], **{key: p.value})
            ok = (len(so) == len(to) and so[p.object][key] != p.value
                  and to == [changed if j == p.object else o for j, o in enumerate(so)])
    if not ok:
        raise ValueError(f"{where}: source and target scenes do not differ by the stated {p.category} edit "
                         f"(object {p.object}, {p.attribute} -> {p.value})")


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
            p = EditPair(id=str(row.get("id", f"pair-{line_no}")), category=str(row.get("category", "edit")),
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


if __name__ == "__main__":
    out = write_pairs(make_pairs())
    print(f"wrote {sum(1 for _ in out.open())} pairs to {out}")
