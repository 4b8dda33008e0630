"""The rich shapes world: seeded scenes, exact oracle on every new attribute, caption round trip, the classic world
untouched, and token labels of a hand-checked rich render."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from difflens.interpret.labels import all_concepts, label_image, rich_concepts
from difflens.world import (COMPOSITES, PATTERNS, POSITIONS, RICH_BACKGROUNDS, RICH_SHAPES, TEXTURES, ObjectSpec,
                            Scene, parse_caption, read_image, render, render_parts, sample_scenes, vocabulary,
                            world_prompts)
from difflens.world.caption import caption_world
from difflens.world.perturb import roughen_edges, soften
from difflens.world.rich import rich_heldout_combinations
from difflens.world.scoring import score_rich_images


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes() if isinstance(a, np.ndarray) else str(a).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# the classic world is exactly what it was (hashes computed before the rich world existed)

def test_classic_scenes_captions_and_renders_are_unchanged():
    scenes = sample_scenes(3, seed=0)
    assert [s.caption for s in scenes] == [
        "a picture of a small green square in the center on a black background",
        "a large purple triangle in the bottom right on a gray background",
        "white background with a large red diamond in the center"]
    assert [_sha(render(s)[0]) for s in scenes] == ["69a3f6bdd1661ddd", "97b2d60bc9914c1c", "ed1061387f8673a7"]
    assert _sha("\n".join(world_prompts(200, seed=0))) == "acf84a849c4281d2"
    assert _sha("\n".join(world_prompts(100, seed=3, split="heldout"))) == "3c469fce42e40f52"
    h = hashlib.sha256()
    for seed in (0, 1, 7):
        for split in ("train", "heldout"):
            for s in sample_scenes(40, seed=seed, split=split):
                h.update(repr((s.background, s.caption,
                               [(o.shape, o.color, o.size, o.position, o.offset) for o in s.objects])).encode())
                image, masks = render(s)
                h.update(image.tobytes())
                for m in masks:
                    h.update(m.tobytes())
    assert h.hexdigest()[:16] == "e17d07b84c86637f"
    assert all(s.texture == "plain" and all(o.pattern == "solid" for o in s.objects) for s in sample_scenes(50))


def test_classic_vocabulary_is_the_shipped_models():
    import json
    from pathlib import Path

    import difflens.embedded as embedded

    shipped = json.loads((Path(embedded.__file__).parent / "weights" / "config.json").read_text())["vocab"]
    assert vocabulary() == shipped
    rich = vocabulary("rich")
    assert set(shipped) < set(rich)
    assert {"striped", "dotted", "checked", "gradient", "house", "snowman", "tree", "huge", "pink", "cyan"} <= set(rich)
    with pytest.raises(ValueError, match="world"):
        vocabulary("fancy")


def test_classic_oracle_reading_is_unchanged():
    # readings of clean, blurred and ragged classic renders by the classic oracle, hashed before the rich world
    h = hashlib.sha256()
    rng = np.random.default_rng(0)
    for s in sample_scenes(60, seed=11):
        im, m = render(s)
        for x in (im, soften(im, 0.8), roughen_edges(s, im, m, 0.3, rng)):
            r = read_image(x)
            h.update(repr((r.background, [(o.color, o.shape, o.size, o.position, o.area, o.centroid)
                                          for o in r.objects])).encode())
            for o in r.objects:
                h.update(o.mask.tobytes())
    assert h.hexdigest()[:16] == "b9fbb91e152f198b"


# ---------------------------------------------------------------------------------------------------------------
# rich scenes

def test_rich_world_is_deterministic_by_seed_and_covers_every_attribute():
    a, b, c = (sample_scenes(300, seed=s, world="rich") for s in (3, 3, 4))
    assert a == b and a != c
    assert all(np.array_equal(render(x)[0], render(y)[0]) for x, y in zip(a[:5], b[:5]))
    objs = [o for s in a for o in s.objects]
    assert {s.background for s in a} == set(RICH_BACKGROUNDS)
    assert {s.texture for s in a} == set(TEXTURES)
    assert {o.pattern for o in objs} == set(PATTERNS)
    assert {o.shape for o in objs} == set(RICH_SHAPES)
    assert {o.size for o in objs} == {"large", "huge"}
    assert {len(s.objects) for s in a} == {1, 2, 3}
    # objects are large enough to matter: on average a good share of the image
    cover = np.mean([np.logical_or.reduce(render(s)[1]).mean() for s in a[:100]])
    assert cover > 0.12


def test_rich_heldout_split_is_disjoint_from_training():
    held = rich_heldout_combinations()
    train = {(o.color, o.pattern, o.shape) for s in sample_scenes(400, seed=1, world="rich") for o in s.objects}
    heldout = {(o.color, o.pattern, o.shape) for s in sample_scenes(100, seed=1, split="heldout", world="rich")
               for o in s.objects}
    assert not train & held and heldout <= held


def test_rich_objects_keep_apart_and_inside_the_image():
    for s in sample_scenes(60, seed=8, world="rich"):
        _, masks = render(s)
        for m in masks:
            assert not (m[:2].any() or m[-2:].any() or m[:, :2].any() or m[:, -2:].any())
        for i, m in enumerate(masks):
            for other in masks[i + 1:]:
                assert not (m & other).any()


def test_oracle_is_exact_on_rich_renders():
    scenes = sample_scenes(100, seed=11, world="rich")
    hits, n_obj, parts_exact, n_parts = {}, 0, 0, 0
    for scene in scenes:
        image, masks = render(scene)
        truth_parts = render_parts(scene)
        reading = read_image(image, world="rich")
        for a in ("background", "texture"):
            hits[a] = hits.get(a, 0) + (getattr(reading, a) == getattr(scene, a))
        hits["count"] = hits.get("count", 0) + (len(reading.objects) == len(scene.objects))
        truth = sorted(zip(scene.objects, masks, truth_parts), key=lambda t: POSITIONS.index(t[0].position))
        for got, (obj, mask, parts) in zip(reading.objects, truth):
            n_obj += 1
            for a in ("color", "pattern", "shape", "size", "position"):
                hits[a] = hits.get(a, 0) + (getattr(got, a) == getattr(obj, a))
            hits["mask"] = hits.get("mask", 0) + np.array_equal(got.mask, mask)
            if parts:
                n_parts += 1
                parts_exact += set(parts) == set(got.parts) and all(np.array_equal(parts[k], got.parts[k]) for k in parts)
    per_image = {k: hits[k] / len(scenes) for k in ("background", "texture", "count")}
    per_object = {k: hits[k] / n_obj for k in ("color", "pattern", "shape", "size", "position", "mask")}
    assert min(per_image.values()) >= 0.99, per_image
    assert min(per_object.values()) >= 0.99, per_object
    assert n_parts >= 20 and parts_exact / n_parts >= 0.99


def test_composite_parts_are_the_named_pieces():
    scene = Scene("white", tuple(ObjectSpec(s, "blue", "huge", p) for s, p in
                                 zip(COMPOSITES, ("left", "center", "right"))))
    for obj, parts in zip(scene.objects, render_parts(scene)):
        upper, lower = COMPOSITES[obj.shape]
        assert list(parts) == [upper, lower]
        top_rows = np.nonzero(parts[upper].any(1))[0]
        bottom_rows = np.nonzero(parts[lower].any(1))[0]
        assert top_rows.max() < bottom_rows.min()  # stacked: the roof / head / crown sits on top
        assert parts[upper].sum() > 20 and parts[lower].sum() > 20
    # a tree's trunk is narrow, a house's roof overhangs its body
    tree, house = render_parts(scene)[2], render_parts(scene)[0]
    width = lambda m: np.ptp(np.nonzero(m.any(0))[0]) + 1  # noqa: E731
    assert width(tree["trunk"]) < width(tree["crown"]) / 2 and width(house["roof"]) > width(house["body"])


def test_rich_oracle_survives_mild_damage():
    scenes = sample_scenes(40, seed=2, world="rich")
    renders = [render(s) for s in scenes]
    rng = np.random.default_rng(0)
    ragged = np.stack([roughen_edges(s, im, m, 0.2, rng) for s, (im, m) in zip(scenes, renders)])
    blurred = np.stack([soften(im, 0.6) for im, _ in renders])
    for images in (ragged, blurred):
        scores = score_rich_images(scenes, images, [render_parts(s) for s in scenes])
        assert min(v for k, v in scores.items() if k.endswith("_acc")) >= 0.95, scores
        assert scores["part_iou"] >= 0.5


# ---------------------------------------------------------------------------------------------------------------
# captions

def _without_jitter(scene: Scene) -> Scene:
    return dataclasses.replace(scene, objects=tuple(dataclasses.replace(o, offset=(0.0, 0.0)) for o in scene.objects))


@pytest.mark.parametrize("world", ["classic", "rich"])
def test_caption_round_trip(world):
    for split in ("train", "heldout"):
        for scene in sample_scenes(150, seed=6, split=split, world=world):
            parsed = parse_caption(scene.caption)
            assert parsed == _without_jitter(scene), scene.caption
            assert caption_world(scene.caption) == world or world == "rich"
            assert np.array_equal(render(parsed)[0], render(_without_jitter(scene))[0])


def test_rich_captions_name_everything():
    scene = Scene("cyan", (ObjectSpec("snowman", "yellow", "huge", "top left", pattern="dotted"),
                           ObjectSpec("circle", "red", "large", "bottom right")), texture="gradient")
    from difflens.world import rich_caption

    text = rich_caption(scene)
    assert text == ("a huge dotted yellow snowman in the top left and a large red circle in the bottom right "
                    "on a cyan gradient background")
    assert parse_caption(text) == dataclasses.replace(scene, caption=text)
    assert caption_world(text) == "rich"
    assert caption_world("a large red circle on the left on a white background") == "classic"


def test_unknown_words_and_bad_forms_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['blob'\]"):
        parse_caption("a large red blob on the left on a white background")
    with pytest.raises(ValueError, match="background"):
        parse_caption("a large red circle on the left on a purple background")
    with pytest.raises(ValueError, match="cannot read object 'large red circle'"):
        parse_caption("a large red circle on a white background")
    with pytest.raises(ValueError, match="not a position phrase"):
        parse_caption("a large red circle at the left on a white background")
    with pytest.raises(ValueError, match="and"):
        parse_caption("a large red circle on the left, a small blue square on the right on a white background")
    with pytest.raises(ValueError, match="world"):
        sample_scenes(2, world="fancy")


def test_the_embedded_tokenizer_accepts_old_prompts_and_rejects_rich_words():
    from difflens.embedded.text_encoder import WordTokenizer

    tok = WordTokenizer(vocabulary(), 24)
    tok(world_prompts(20, seed=0))
    with pytest.raises(ValueError, match="unknown word"):
        tok(["a large striped red house in the center on a white background"])
    rich = world_prompts(50, seed=0, world="rich")
    WordTokenizer(vocabulary("rich"), 40)(rich)


# ---------------------------------------------------------------------------------------------------------------
# token labels of a rich render (16x16 tokens of 4x4 px)

CONCEPTS = all_concepts()

# a huge striped red house at the centre of a pink dotted background: the house spans pixel rows and columns
# 18..45; the roof ends at pixel row 30 (eaves at y = 32 - 0.1 * 14.08 = 30.6), the body (columns 22..41) starts
# at row 31. Token row 7 (pixels 28..31) holds 3 roof rows and 1 body row, so its tokens are roof tokens.
HOUSE = {
    "part:house-roof": """
        .......##.......
        ......####......
        .....######.....""",  # token rows 5..7
    "part:house-body": """
        .....######.....
        .....######.....
        .....######.....
        ......####......""",  # token rows 8..11
    "part:boundary": """
        .......##.......
        ......####......
        .....##..##.....
        ....##....##....
        .....#....#.....
        .....#....#.....
        .....#....#.....
        .....######.....""",  # token rows 4..11
}
FIRST_ROW = {"part:house-roof": 5, "part:house-body": 8, "part:boundary": 4}


def _picture(text: str, first_row: int) -> np.ndarray:
    out = np.zeros((16, 16), bool)
    for i, line in enumerate(text.split()):
        out[first_row + i] = [c == "#" for c in line]
    return out


def test_labels_of_a_rich_render_match_the_hand_checked_house():
    scene = Scene("pink", (ObjectSpec("house", "red", "huge", "center", pattern="striped"),), texture="dotted")
    labels, reading = label_image(render(scene)[0], (16, 16), world="rich")
    col = lambda name: labels[:, CONCEPTS.index(name)].reshape(16, 16)  # noqa: E731
    for name, picture in HOUSE.items():
        assert (col(name) == _picture(picture, FIRST_ROW[name])).all(), name
    obj = col("part:object")
    assert (obj == col("part:house-roof") | col("part:house-body")).all()
    for name in ("pattern:striped", "shape:house", "size:huge", "color:red", "pair:red&striped", "pair:house&striped",
                 "pair:red&house", "cell:center"):
        assert (col(name) == obj).all(), name
    for name in ("texture:dotted", "bg:pink", "bg:pink&dotted", "part:background"):
        assert (col(name) == ~obj).all(), name
    for name in ("pattern:solid", "texture:plain", "bg:white", "part:snowman-head", "shape:square"):
        assert not col(name).any(), name


def test_classic_labels_carry_no_rich_concept():
    scene = Scene("gray", (ObjectSpec("square", "red", "large", "center"),))
    labels, _ = label_image(render(scene)[0], (16, 16))
    rich = [CONCEPTS.index(n) for n in rich_concepts()]
    assert not labels[:, rich].any()
    # the classic concepts first, in their old order; then the rich world's; then the place family of both worlds
    from difflens.interpret.labels import place_concepts

    later = set(rich_concepts()) | set(place_concepts())
    assert CONCEPTS == [c for c in CONCEPTS if c not in later] + rich_concepts() + place_concepts()
    patterned = [CONCEPTS.index(n) for n in place_concepts() if n.rsplit("&", 1)[-1] in ("solid", "striped")]
    assert not labels[:, patterned].any()  # classic readings have no pattern


def test_a_store_of_rich_prompts_is_read_by_the_rich_oracle():
    from difflens.interpret.labels import store_world

    class Prompts:
        def __init__(self, prompts):
            self._p = [{"image_id": i, "prompt": p, "seed": i} for i, p in enumerate(prompts)]

        def prompts(self):
            return self._p

    assert store_world(Prompts(world_prompts(20, seed=0))) == "classic"
    assert store_world(Prompts(["p0", "a photo of a cat"])) == "classic"
    assert store_world(Prompts(world_prompts(5, seed=0) + world_prompts(1, seed=0, world="rich"))) == "rich"
