"""Token-level ground truth of the embedded shapes world, read by the oracle from each stored *generated* image.

Every token of an image-stream site covers one block of pixels (the embedded model: a 16×16 grid over 64 px,
so 4×4 pixels). A token belongs to an object when at least half of its pixel block lies inside the oracle's
mask of that object (the object covering the larger share wins a tie); every other token is background.
Labels are what the oracle reads from the generated pixels, not what the prompt asked for.

Concepts (a fixed, bounded list; those with fewer than ``MIN_POSITIVE_TOKENS`` positive tokens in a store are
dropped; a token can carry many):

    bg:<white|black|gray>        background token of an image with that background colour
    part:background|object       any background / any object token
    part:edge | part:interior    object token with some / none of its 4 neighbours outside the object
                                 (the image border counts as outside)
    color:<c>  shape:<s>  size:<s>  cell:<top-left..bottom-right>  row:<top|middle|bottom>  col:<left|center|right>
                                 object token whose object has that attribute (row/col: of its 3×3 grid cell)
    side:<above|below|left|right>  background token whose 4-neighbour on the other side is an object token:
                                 side:below = the token just below an object (its upper neighbour is the object)
    near:<side>:<c>              the same, the object being of colour c
    pair:<c>&<s>  pair:<c>&<size>  pair:<s>&<size>  pair:<c>&<row>-row  pair:<c>&<col>-col
    pair:<s>&<row>-row  pair:<s>&<col>-col
                                 conjunctions of two attributes of the token's object (pair:red&square,
                                 pair:red&left-col, ...), so a latent that splits a concept can still be named

Rich world only (images read with the rich oracle; appended after the classic concepts, whose names and order
are unchanged; classic readings never carry them):

    bg:<pink|cyan>               background token of an image with that (rich) background colour
    texture:<plain|striped|dotted|checked|gradient>   background token of an image with that background texture
    bg:<colour>&<texture>        both (bg:pink&striped)
    pattern:<solid|striped|dotted|checked>            object token whose object has that pattern
    shape:<house|snowman|tree>  size:huge             (and their pair: conjunctions, as above)
    part:<shape>-<part>          object token of a composite object, in that part (the part holding more of the
                                 token's pixel block): part:house-roof, part:house-body, part:snowman-head,
                                 part:snowman-body, part:tree-crown, part:tree-trunk
    part:boundary                token straddling an object's outline: its pixel block holds pixels of an object
                                 and pixels outside it (object and background tokens alike)
    pair:<c>&<pattern>  pair:<s>&<pattern>

Both worlds, appended last (a token's place within its own object, so latents that fire on one side of their
objects can be named; a token can be in several places):

    place:<top|bottom|left|right>-edge   object token whose neighbour on that side is not its own object (the
                                 image border counts as outside): the object's top row, bottom row, ...
    place:corner                 object token with outside neighbours on two perpendicular sides
    place:centre                 object token in the middle half of its object's token extent on both axes
    place:<p>&<c>  place:<p>&<s>  place:<p>&<pattern>    each place with the object's colour, shape and (rich
                                 world) pattern: place:bottom-edge&purple, place:right-edge&striped, ...

Concepts are **coarse** or **specific** (`concept_kind`): the five coarse ones say only what kind of token it is
(part:object, part:background, part:edge, part:interior, part:boundary); every other concept names an attribute,
a place or a conjunction. Ground-truth headlines count a latent as explained only by a specific concept.

Which oracle reads a store's images (`world`, a `difflens.world.World`): the narrowest world that holds every
prompt, so "rich" when any of its prompts is a rich-world caption (it names a texture, pattern, composite shape,
"huge", a rich background colour or three objects), else "classic" (so classic stores keep exactly their labels).
The prompts only choose the reader; every label comes from pixels. The rich concepts above are those of a world
whose oracle reads details (`World.reads_details`: textures, patterns, parts).

`token_labels(store)` reads every image once and caches the result in ``<store>/labels/labels-<h>x<w>.safetensors``
(written atomically; bit-packed labels plus the concept names, the grid and each image's reading in its metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difflens.atomic import atomic_save_tensors
from difflens.outputs import note
from difflens.reading import CorruptFileError, read_metadata_json, read_safetensors
from difflens.world.oracle import SceneReading
from difflens.world.palette import COMPOSITES
from difflens.world.scene import COLORS, POSITIONS
from difflens.world.worlds import CLASSIC, DEFAULT_WORLD, RICH, WORLDS, World, get_world

LABELS_VERSION = 2  # bump when the rule or the concept list changes: cached labels of another version are rebuilt
MIN_POSITIVE_TOKENS = 8  # a concept with fewer positive tokens in the whole store is dropped
OWNERSHIP_FRACTION = 0.5  # share of a token's pixel block inside an object's mask that makes it an object token
LABELS_DIR = "labels"

ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
# side name -> (dr, dc) of the neighbour that must be an object token: "below" = the object is just above the token
SIDES = {"above": (1, 0), "below": (-1, 0), "left": (0, 1), "right": (0, -1)}


def _cell_name(position: str) -> str:
    return position.replace(" ", "-")


def _concepts(world: World) -> list[str]:
    """The classic concept families over a world's attribute values."""
    backgrounds, shapes, sizes = world.backgrounds, world.shapes, world.sizes
    names = [f"bg:{b}" for b in backgrounds]
    names += ["part:background", "part:object", "part:edge", "part:interior"]
    names += [f"color:{c}" for c in COLORS] + [f"shape:{s}" for s in shapes] + [f"size:{s}" for s in sizes]
    names += [f"cell:{_cell_name(p)}" for p in POSITIONS] + [f"row:{r}" for r in ROWS] + [f"col:{c}" for c in COLS]
    names += [f"side:{s}" for s in SIDES] + [f"near:{s}:{c}" for s in SIDES for c in COLORS]
    names += [f"pair:{c}&{s}" for c in COLORS for s in shapes]
    names += [f"pair:{c}&{z}" for c in COLORS for z in sizes]
    names += [f"pair:{s}&{z}" for s in shapes for z in sizes]
    names += [f"pair:{c}&{r}-row" for c in COLORS for r in ROWS]
    names += [f"pair:{c}&{k}-col" for c in COLORS for k in COLS]
    names += [f"pair:{s}&{r}-row" for s in shapes for r in ROWS]
    names += [f"pair:{s}&{k}-col" for s in shapes for k in COLS]
    return names


def rich_concepts() -> list[str]:
    """The concepts only rich-world readings carry, in a fixed order (see the module docstring)."""
    classic = set(_concepts(CLASSIC))
    names = [n for n in _concepts(RICH) if n not in classic]
    names += [f"texture:{t}" for t in RICH.textures] + [f"bg:{b}&{t}" for b in RICH.backgrounds for t in RICH.textures]
    names += [f"pattern:{p}" for p in RICH.patterns]
    names += [f"part:{s}-{part}" for s, parts in COMPOSITES.items() for part in parts] + ["part:boundary"]
    names += [f"pair:{c}&{p}" for c in COLORS for p in RICH.patterns]
    names += [f"pair:{s}&{p}" for s in RICH.shapes for p in RICH.patterns]
    return names


PLACES = ("top-edge", "bottom-edge", "left-edge", "right-edge", "corner", "centre")
# object-token place -> (dr, dc) of the neighbour that must lie outside the object
EDGE_OFFSETS = {"top-edge": (-1, 0), "bottom-edge": (1, 0), "left-edge": (0, -1), "right-edge": (0, 1)}
COARSE_CONCEPTS = ("part:object", "part:background", "part:edge", "part:interior", "part:boundary")


def place_concepts() -> list[str]:
    """The place-within-object family (both worlds), in a fixed order."""
    names = [f"place:{p}" for p in PLACES]
    for values in (COLORS, RICH.shapes, RICH.patterns):
        names += [f"place:{p}&{v}" for p in PLACES for v in values]
    return names


def all_concepts() -> list[str]:
    """Every concept the labeller knows, in a fixed order: the classic ones (general ones first, conjunctions last),
    then the rich world's, then the place family."""
    return _concepts(CLASSIC) + rich_concepts() + place_concepts()


def concept_kind(concept: str) -> str:
    """"coarse" (only what kind of token: object, background, outline) or "specific" (an attribute, a place or a
    conjunction)."""
    return "coarse" if concept in COARSE_CONCEPTS else "specific"


_ALL = all_concepts()
_INDEX = {name: i for i, name in enumerate(_ALL)}


def object_concepts(color: str, shape: str, size: str, position: str) -> list[str]:
    """The concepts every token of an object with these attributes carries (not edge/interior)."""
    row, col = divmod(POSITIONS.index(position), 3)
    r, k = ROWS[row], COLS[col]
    return ["part:object", f"color:{color}", f"shape:{shape}", f"size:{size}", f"cell:{_cell_name(position)}",
            f"row:{r}", f"col:{k}", f"pair:{color}&{shape}", f"pair:{color}&{size}", f"pair:{shape}&{size}",
            f"pair:{color}&{r}-row", f"pair:{color}&{k}-col", f"pair:{shape}&{r}-row", f"pair:{shape}&{k}-col"]


def block_mean(mask_HW: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(gh, gw) float: the mean of each token's pixel block (of a mask: the share of the block inside it)."""
    gh, gw = grid
    H, W = mask_HW.shape
    if H % gh or W % gw:
        raise ValueError(f"a {H}×{W} image does not split into a {gh}×{gw} token grid of whole pixel blocks")
    return mask_HW.reshape(gh, H // gh, gw, W // gw).mean(axis=(1, 3))


def token_owner(reading: SceneReading, grid: tuple[int, int]) -> np.ndarray:
    """(gh, gw) int: index of the object owning each token (≥ half its pixel block in the mask), -1 for background."""
    gh, gw = grid
    owner = np.full((gh, gw), -1, dtype=np.int64)
    best = np.zeros((gh, gw))
    for i, obj in enumerate(reading.objects):
        share = block_mean(obj.mask, grid)
        take = (share >= OWNERSHIP_FRACTION) & (share > best)
        owner[take], best[take] = i, share[take]
    return owner


def neighbour_owner(owner: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """owner of the token at (r + dr, c + dc) for every (r, c); -1 outside the grid."""
    out = np.full_like(owner, -1)
    gh, gw = owner.shape
    out[max(0, -dr): gh - max(0, dr), max(0, -dc): gw - max(0, dc)] = \
        owner[max(0, dr): gh - max(0, -dr), max(0, dc): gw - max(0, -dc)]
    return out


def reading_token_labels(reading: SceneReading, grid: tuple[int, int], world: str | World = "classic") -> np.ndarray:
    """Labels of one read image: bool (T, C_all) over `all_concepts()`, T = gh·gw in row-major token order.
    A world whose oracle reads details (`world="rich"`) adds the rich concepts (texture, pattern, parts, boundary,
    ...)."""
    details = get_world(world).reads_details
    gh, gw = grid
    owner = token_owner(reading, grid)
    labels = np.zeros((gh, gw, len(_ALL)), dtype=bool)
    background = owner < 0
    labels[background, _INDEX[f"bg:{reading.background}"]] = True
    labels[background, _INDEX["part:background"]] = True
    neighbours = {side: neighbour_owner(owner, dr, dc) for side, (dr, dc) in SIDES.items()}
    for i, obj in enumerate(reading.objects):
        mine = owner == i
        for name in object_concepts(obj.color, obj.shape, obj.size, obj.position):
            labels[mine, _INDEX[name]] = True
        interior = mine & np.logical_and.reduce([n == i for n in neighbours.values()])
        labels[interior, _INDEX["part:interior"]] = True
        labels[mine & ~interior, _INDEX["part:edge"]] = True
        for side, n in neighbours.items():
            near = background & (n == i)
            labels[near, _INDEX[f"side:{side}"]] = True
            labels[near, _INDEX[f"near:{side}:{obj.color}"]] = True
    _place_token_labels(reading, owner, labels, rich=details)
    if details:
        _rich_token_labels(reading, grid, owner, labels)
    return labels.reshape(gh * gw, len(_ALL))


def _place_token_labels(reading: SceneReading, owner: np.ndarray, labels: np.ndarray, rich: bool) -> None:
    """Set the place-within-object concepts of one read image in `labels` (gh, gw, C_all), in place."""
    for i, obj in enumerate(reading.objects):
        mine = owner == i
        if not mine.any():
            continue
        places = {p: mine & (neighbour_owner(owner, dr, dc) != i) for p, (dr, dc) in EDGE_OFFSETS.items()}
        vertical = places["top-edge"] | places["bottom-edge"]
        places["corner"] = vertical & (places["left-edge"] | places["right-edge"])
        rows, cols = np.nonzero(mine)
        r, c = np.indices(owner.shape)
        middle = [np.abs((x - lo + 0.5) / (hi - lo + 1) - 0.5) <= 0.25  # the middle half of the extent
                  for x, lo, hi in ((r, rows.min(), rows.max()), (c, cols.min(), cols.max()))]
        places["centre"] = mine & middle[0] & middle[1]
        values = [obj.color, obj.shape] + ([obj.pattern] if rich else [])
        for p, where in places.items():
            labels[where, _INDEX[f"place:{p}"]] = True
            for v in values:
                labels[where, _INDEX[f"place:{p}&{v}"]] = True


def _rich_token_labels(reading: SceneReading, grid: tuple[int, int], owner: np.ndarray, labels: np.ndarray) -> None:
    """Set the rich concepts of one read image in `labels` (gh, gw, C_all), in place."""
    background = owner < 0
    for name in (f"texture:{reading.texture}", f"bg:{reading.background}&{reading.texture}"):
        labels[background, _INDEX[name]] = True
    straddle = np.zeros(owner.shape, bool)
    for i, obj in enumerate(reading.objects):
        mine = owner == i
        share = block_mean(obj.mask, grid)
        straddle |= (share > 0) & (share < 1)
        for name in (f"pattern:{obj.pattern}", f"pair:{obj.color}&{obj.pattern}", f"pair:{obj.shape}&{obj.pattern}"):
            labels[mine, _INDEX[name]] = True
        if obj.parts:  # the part holding the larger share of each token's block (the upper part on a tie)
            names = list(obj.parts)
            shares = np.stack([block_mean(obj.parts[n], grid) for n in names])
            pick = shares.argmax(0)
            for j, part in enumerate(names):
                labels[mine & (pick == j) & (shares[j] > 0), _INDEX[f"part:{obj.shape}-{part}"]] = True
    labels[straddle, _INDEX["part:boundary"]] = True


def label_image(image: np.ndarray, grid: tuple[int, int],
                world: str | World = "classic") -> tuple[np.ndarray, SceneReading]:
    """(labels bool (T, C_all) over `all_concepts()`, the oracle's reading) of one RGB uint8 image (H, W, 3),
    read by the `world`'s oracle."""
    world = get_world(world)
    reading = world.read(image)
    return reading_token_labels(reading, grid, world=world), reading


def store_world(store) -> str:
    """The name of the narrowest world that holds every prompt of the store: "rich" when any is a rich-world
    caption, else "classic" (prompts that are no shapes-world caption at all count as classic). It picks the
    oracle; labels still come from the pixels."""
    from difflens.world.caption import caption_world

    order = list(WORLDS)
    widest = 0
    for entry in store.prompts():
        try:
            widest = max(widest, order.index(caption_world(entry["prompt"])))
        except ValueError:
            continue
        if widest == len(order) - 1:
            break
    return order[widest]


def require_world_store(store) -> None:
    """Refuse a store whose images are not of the shapes world, saying what to use instead: ground truth is the
    oracle's reading of shapes-world images, and on another model's pictures it would be a confident fiction. A
    store qualifies when an embedded model drew it, or when every prompt is a shapes-world caption."""
    from difflens.world.caption import caption_world

    model = str(store.meta.get("model") or "")
    if model.startswith("embedded"):
        return
    for entry in store.prompts():
        try:
            caption_world(entry["prompt"])
        except ValueError:
            raise ValueError(
                f"{store.root} was captured from {model or 'an unknown model'!r} with prompts that are not "
                f"shapes-world captions (e.g. {entry['prompt']!r}): ground truth (token labels, truth scores, the "
                f"oracle autointerp backend) exists only for images of the embedded shapes world. For other models "
                f"use `difflens autointerp --backend openai` (a vision-language model explains and judges) and "
                f"`difflens bench edits --pairs FILE` with RIEBench pairs") from None


@dataclass
class TokenLabels:
    """Bit-packed boolean labels (n_images, T, C) of every token of every image of a store, indexed by image id.

    `packed` is (n_images, T, ceil(C / 8)) uint8, packed along concepts with little bit order.
    """

    concepts: list[str]
    grid: tuple[int, int]
    packed: np.ndarray
    readings: list[dict]  # the oracle's reading of each image: {"background", "objects": [{color, shape, ...}]}
    world: str = DEFAULT_WORLD.name  # the world whose oracle read the images

    @property
    def num_images(self) -> int:
        return self.packed.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.packed.shape[1]

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    def index(self, concept: str) -> int:
        try:
            return self.concepts.index(concept)
        except ValueError:
            raise KeyError(f"unknown concept {concept!r} (this store's labels have {len(self.concepts)} concepts)") from None

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        return np.unpackbits(packed, axis=-1, count=self.num_concepts, bitorder="little").astype(bool)

    def image(self, image_id: int) -> np.ndarray:
        """bool (T, C) labels of one image."""
        return self._unpack(self.packed[int(image_id)])

    def rows(self, image_id, token_index) -> np.ndarray:
        """bool (B, C) labels of stored rows given their trace (image id and token index, each (B,))."""
        return self._unpack(self.packed[np.asarray(image_id, dtype=np.int64), np.asarray(token_index, dtype=np.int64)])

    def dense(self, image_ids=None) -> np.ndarray:
        """bool (n, T, C) labels of `image_ids` (default: every image; n_images·T·C bytes, so mind large stores)."""
        sel = self.packed if image_ids is None else self.packed[np.asarray(image_ids, dtype=np.int64)]
        return self._unpack(sel)

    labels_ITC = property(dense)

    def counts(self, image_ids=None) -> np.ndarray:
        """int64 (C,) positive tokens per concept over `image_ids` (default: every image)."""
        out = np.zeros(self.num_concepts, dtype=np.int64)
        ids = np.arange(self.num_images) if image_ids is None else np.asarray(image_ids, dtype=np.int64)
        for start in range(0, len(ids), 256):
            out += self.dense(ids[start: start + 256]).sum(axis=(0, 1))
        return out

    def presence(self, image_ids=None) -> np.ndarray:
        """bool (n, C): does the concept occur anywhere in each image."""
        ids = np.arange(self.num_images) if image_ids is None else np.asarray(image_ids, dtype=np.int64)
        return np.concatenate([self.dense(ids[s: s + 256]).any(axis=1) for s in range(0, len(ids), 256)]
                              or [np.zeros((0, self.num_concepts), bool)])


def concept_of_tokens(labels: TokenLabels, image_id: int) -> dict[str, np.ndarray]:
    """{concept: bool mask (T,)} of one image, for the concepts present in it (at least one positive token)."""
    img = labels.image(image_id)
    return {name: img[:, c].copy() for c, name in enumerate(labels.concepts) if img[:, c].any()}


def labels_path(store, grid: tuple[int, int], world: str | World = "classic") -> Path:
    world = get_world(world)
    suffix = "" if world is DEFAULT_WORLD else f"-{world.name}"  # the default's files predate worlds
    return Path(store.root) / LABELS_DIR / f"labels-{grid[0]}x{grid[1]}{suffix}.safetensors"


def image_grid(store, site: str | None = None) -> tuple[int, int]:
    """The token grid of `site` (an image-stream site), or the one grid all the store's image sites share."""
    from difflens.store import layout
    from difflens.reading import read_json

    grids, streams = set(), {}
    for s, step in store.entries():
        if site is not None and s != site:
            continue
        m = read_json(layout.entry_dir(store.root, s, step) / layout.SITE_MANIFEST, "site manifest")
        streams[s] = m["stream"]
        if m["stream"] == "image" and m.get("grid"):
            grids.add(tuple(int(g) for g in m["grid"]))
    if site is not None and site not in streams:
        raise ValueError(f"{store.root} holds no site {site!r}")
    if site is not None and streams[site] != "image":
        raise ValueError(f"site {site!r} is a {streams[site]}-stream site: token labels exist only for image tokens")
    if not grids:
        raise ValueError(f"{store.root} holds no image-stream site with a token grid, so its tokens cannot be labelled")
    if len(grids) > 1:
        raise ValueError(f"{store.root} has image sites with different token grids {sorted(grids)}: pass grid=")
    return grids.pop()


def _cache_meta(store, grid, world: World = DEFAULT_WORLD) -> dict:
    meta = {"version": str(LABELS_VERSION), "grid": json.dumps(list(grid)),
            "n_images": str(store.meta.get("n_images")), "prompts_hash": str(store.meta.get("prompts_hash"))}
    if world is not DEFAULT_WORLD:  # caches of the default world written before worlds existed stay valid
        meta["world"] = world.name
    return meta


def _load_cached(path: Path, want: dict) -> TokenLabels | None:
    """The cached labels, or None to rebuild them: made for another store, grid or world (silently), or corrupt
    (truncated, garbled, empty: said on stderr)."""
    what = "labels cache"
    try:
        tensors, meta = read_safetensors(path, what, framework="np", keys=lambda key: key == "packed")
        default = DEFAULT_WORLD.name
        if any(meta.get(k) != v for k, v in want.items()) or meta.get("world", default) != want.get("world", default):
            return None
        if "packed" not in tensors:
            raise CorruptFileError(path, what, "no 'packed' tensor")
        concepts, grid, readings = (read_metadata_json(path, meta, key, what) for key in ("concepts", "grid", "readings"))
    except CorruptFileError as err:
        note(f"rebuilding the corrupt labels cache {err.path} ({err.problem})")
        return None
    return TokenLabels(concepts, tuple(grid), tensors["packed"], readings, meta.get("world", DEFAULT_WORLD.name))


def token_labels(store, *, grid: tuple[int, int] | None = None, cache: bool = True,
                 world: str | None = None) -> TokenLabels:
    """Labels of every token of every image of `store` (a folder or an opened store), from the oracle's reading of
    each generated image; built once and cached in ``<store>/labels/`` (rebuilt when the cache does not match).
    `world`: whose oracle reads the images (a name, "classic" | "rich", or a `World`); default `store_world(store)`."""
    from difflens.store.sources import open_store

    if isinstance(store, (str, Path)):
        store = open_store(store)
    require_world_store(store)
    grid = tuple(int(g) for g in grid) if grid is not None else image_grid(store)
    world = get_world(world or store_world(store))
    path = labels_path(store, grid, world)
    want = _cache_meta(store, grid, world)
    if cache and path.exists():
        cached = _load_cached(path, want)
        if cached is not None:
            return cached
    n_images = len(store.prompts())
    if n_images and not Path(store.image_info(0)["path"]).exists():
        raise FileNotFoundError(f"{store.root} kept no generated images (captured without --images?): token labels are "
                                f"read from the images, so recapture with images saved")
    T = grid[0] * grid[1]
    full = np.zeros((n_images, T, len(_ALL)), dtype=bool)
    readings = []
    for image_id in range(n_images):
        full[image_id], reading = label_image(store.load_image(image_id), grid, world)
        readings.append(world.describe(reading, geometry=True))
    keep = full.sum(axis=(0, 1)) >= MIN_POSITIVE_TOKENS
    concepts = [name for name, k in zip(_ALL, keep) if k]
    packed = np.packbits(full[:, :, keep], axis=-1, bitorder="little")
    labels = TokenLabels(concepts, grid, packed, readings, world.name)
    if cache:
        import torch

        meta = {**want, "concepts": json.dumps(concepts), "readings": json.dumps(readings),
                "ownership_fraction": str(OWNERSHIP_FRACTION), "min_positive_tokens": str(MIN_POSITIVE_TOKENS)}
        atomic_save_tensors(path, {"packed": torch.from_numpy(np.ascontiguousarray(packed))}, metadata=meta,
                            what="labels cache")
    return labels
