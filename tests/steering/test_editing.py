"""The editing benchmark: feature selection, pair files, oracle scoring, the delta intervention, and a tiny run
end to end on the tiny embedded model."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import pytest
import torch
from tiny_models import adapter

from difflens.steering.editing import pairs as P
from difflens.steering.editing.methods import TokenDeltas, token_deltas
from difflens.steering.editing.scoring import PSNR_CAP, bootstrap_ci, facts, judge, psnr_outside, summarise
from difflens.steering.editing.selection import feature_scores, random_like, top_and_bottom_features, transfer_delta
from difflens.world.oracle import ObjectReading, SceneReading


# ------------------------------------------------------------------ feature selection
def test_selection_picks_the_planted_latents():
    g = torch.Generator().manual_seed(0)
    T, F = 64, 200
    mask = torch.zeros(T)
    mask[10:30] = 1
    base = torch.rand(T, F, generator=g) * (torch.rand(T, F, generator=g) < 0.05)  # sparse background codes
    source, target = base.clone(), base.clone()
    target[10:30, [3, 77]] += 2.0  # planted: on in the target, inside the mask
    source[10:30, [150]] += 2.0  # planted: on in the source only
    target[40:60, [5]] += 9.0  # outside the mask: must not count
    scores = feature_scores(source, target, mask)
    top, bottom = top_and_bottom_features(scores, 2)
    assert set(top.tolist()) == {3, 77}
    assert bottom[0].item() == 150
    top1, bottom1 = top_and_bottom_features(scores, 1)
    assert len(top1) == 1 and top1.item() in (3, 77) and bottom1.tolist() == [150]


def test_selection_keeps_only_signed_latents():
    scores = torch.tensor([0.5, 0.0, -0.2, 0.0])
    top, bottom = top_and_bottom_features(scores, 3)
    assert top.tolist() == [0] and bottom.tolist() == [2]


def test_transfer_delta_adds_target_codes_and_subtracts_source_codes_inside_the_mask():
    g = torch.Generator().manual_seed(1)
    T, F, D = 6, 5, 4
    dirs = torch.randn(F, D, generator=g)
    src, tgt = torch.rand(T, F, generator=g), torch.rand(T, F, generator=g)
    mask = torch.tensor([1.0, 1, 0, 0, 1, 0])
    d = transfer_delta(dirs, src, tgt, torch.tensor([1]), torch.tensor([3, 4]), mask, 2.0)
    want = 2.0 * (tgt[:, [1]] @ dirs[[1]] - src[:, [3, 4]] @ dirs[[3, 4]])
    torch.testing.assert_close(d[mask > 0], want[mask > 0])
    assert d[mask == 0].abs().max() == 0
    r = random_like(d, dirs, src, tgt, torch.tensor([1]), torch.tensor([3, 4]), mask, g)
    torch.testing.assert_close(r.norm(dim=-1), d.norm(dim=-1))  # matched norm, token by token
    assert r[mask == 0].abs().max() == 0


# ------------------------------------------------------------------ pairs
def test_shipped_pairs_file_is_make_pairs_and_valid(tmp_path):
    shipped = P.read_pairs(vocabulary=set(__import__("difflens.world.scene", fromlist=["x"]).vocabulary()))
    made = P.make_pairs()
    assert [p.to_json() for p in shipped] == [p.to_json() for p in made]
    counts = Counter(p.category for p in shipped)
    assert set(counts) == set(P.WORLD_CATEGORIES["classic"]) and min(counts.values()) >= 50
    assert P.write_pairs(made, tmp_path / "made.jsonl").read_bytes() == P.PAIRS_FILE.read_bytes()  # byte for byte


def test_pairs_round_trip(tmp_path):
    pairs = P.make_pairs(3, seed=5)
    assert len(pairs) == 3 * len(P.WORLD_CATEGORIES["classic"])
    path = P.write_pairs(pairs, tmp_path / "p.jsonl")
    back = P.read_pairs(path)
    assert [p.to_json() for p in back] == [p.to_json() for p in pairs]
    assert P.make_pairs(3, seed=5)[0].to_json() == pairs[0].to_json()  # seeded
    for p in back:  # the scenes differ as stated (read_pairs checks it), and the prompts differ
        assert p.source != p.target and p.judged


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_word_is_a_clear_error(tmp_path):
    row = P.make_pairs(1, categories=("color",))[0].to_json()
    row["target"] = row["target"].replace("background", "pink background")
    path = _write(tmp_path, [row])
    vocab = P.model_vocabulary(adapter("embedded-tiny"))
    with pytest.raises(ValueError, match=r"p.jsonl line 1: unknown word\(s\) \['pink'\] in the target prompt"):
        P.read_pairs(path, vocabulary=vocab)


def test_unknown_word_stops_the_benchmark_before_any_generation(tmp_path, monkeypatch):
    from difflens.steering.editing.run import BenchConfig, run_edit_bench

    row = P.make_pairs(1, categories=("color",))[0].to_json()
    row["source"] = "a zebra " + row["source"]
    path = _write(tmp_path, [row])
    a = adapter("embedded-tiny")
    monkeypatch.setattr(a, "generate", lambda *args, **kw: pytest.fail("generated before validating the pairs"))
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['zebra'\]"):
        run_edit_bench(BenchConfig(pairs=str(path), methods=["swap"], out=""), model=a)


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(category="paint"), "unknown category 'paint'"),
    (lambda r: r["target_scene"]["objects"][0].update(shape="square" if r["target_scene"]["objects"][0]["shape"]
                                                      != "square" else "circle"), "do not differ by the stated color"),
    (lambda r: r.update(object=5), "object index 5"),
    (lambda r: r["source_scene"].update(background="teal"), "unknown background 'teal'"),
    (lambda r: r["source_scene"]["objects"][0].update(pattern="plaid"), "unknown pattern 'plaid'"),
    (lambda r: r["source_scene"].update(texture="wavy"), "unknown texture 'wavy'"),
    (lambda r: r["source_scene"]["objects"][0].update(colour="red"), r"unknown attribute\(s\) \['colour'\]"),
    (lambda r: r["source_scene"].update(lighting="dim"), r"unknown scene attribute\(s\) \['lighting'\]"),
    (lambda r: r["target_scene"].update(texture="striped"), "the texture changes in a color pair"),
    (lambda r: r.pop("target"), "missing field"),
    (lambda r: r.update(seed="x"), "seed must be an integer"),
    (lambda r: r.update(source=7), "source prompt must be a non-empty string"),
    (lambda r: r["source_scene"].update(objects="a red circle"), "'objects' must be a list"),
])
def test_inconsistent_pairs_are_refused(tmp_path, change, message):
    row = P.make_pairs(1, categories=("color",))[0].to_json()
    change(row)
    with pytest.raises(ValueError, match=message):
        P.read_pairs(_write(tmp_path, [row]))


def test_riebench_format(tmp_path):
    mask = np.zeros((8, 8), int)
    mask[2:4, 2:4] = 1
    rows = [{"original_prompt": "a [cat] on a sofa", "editing_prompt": "a [dog] on a sofa", "mask": mask.tolist()},
            {"original_prompt": "a house", "editing_prompt": "a red house", "category": "color", "id": "h"}]
    back = P.read_pairs(_write(tmp_path, rows))
    assert back[0].source == "a cat on a sofa" and back[0].target == "a dog on a sofa" and not back[0].judged
    assert back[0].mask.shape == (8, 8) and back[0].mask.sum() == 4 and back[1].mask is None
    assert back[1].category == "color" and back[1].id == "h" and back[0].seed == 42
    with pytest.raises(ValueError, match="needs both 'original_prompt' and 'editing_prompt'"):
        P.read_pairs(_write(tmp_path, [{"original_prompt": "a cat"}], "bad.jsonl"))
    with pytest.raises(ValueError, match=r"bad.jsonl line 1: seed must be an integer, got 'x'"):
        P.read_pairs(_write(tmp_path, [{"original_prompt": "a cat", "editing_prompt": "a dog", "seed": "x"}],
                            "bad.jsonl"))


def _rich_vocabulary() -> set[str]:
    from difflens.world.scene import vocabulary

    return set(vocabulary("rich"))


def test_rich_pairs_are_a_pure_function_of_the_seed():
    made = [p.to_json() for p in P.make_pairs(2, seed=5, world="rich")]
    assert made == [p.to_json() for p in P.make_pairs(2, seed=5, world="rich")]
    assert made != [p.to_json() for p in P.make_pairs(2, seed=6, world="rich")]
    assert [p["category"] for p in made[::2]] == list(P.WORLD_CATEGORIES["rich"])
    # each category has its own generator: asking for one category alone gives the same pairs
    assert [p.to_json() for p in P.make_pairs(2, seed=5, categories=("texture",), world="rich")] == \
        [p for p in made if p["category"] == "texture"]
    with pytest.raises(ValueError, match="the classic world has no 'pattern' edits"):
        P.make_pairs(1, categories=("pattern",))
    with pytest.raises(ValueError, match="world must be one of classic, rich, got 'neon'"):
        P.make_pairs(1, world="neon")


def _differences(source: dict, target: dict) -> set:
    """{(object index or None, attribute)} where two same-sized scene dicts differ (defaults filled in)."""
    s, t = ({"texture": "plain", **d, "objects": [{"pattern": "solid", **o} for o in d["objects"]]}
            for d in (source, target))
    out = {(None, k) for k in ("background", "texture") if s[k] != t[k]}
    return out | {(j, k) for j, (a, b) in enumerate(zip(s["objects"], t["objects"])) for k in a if a[k] != b[k]}


def test_rich_pairs_parse_back_to_their_scenes_and_differ_in_exactly_the_named_edit():
    from difflens.world.caption import parse_caption
    from difflens.world.rich import rich_heldout_combinations

    pairs = P.read_pairs(P.RICH_PAIRS_FILE, vocabulary=_rich_vocabulary())
    assert Counter(p.category for p in pairs) == {c: P.PAIRS_PER_CATEGORY for c in P.WORLD_CATEGORIES["rich"]}
    heldout = rich_heldout_combinations()
    for p in pairs:
        assert parse_caption(p.source).attributes() == p.source_scene, p.id
        assert parse_caption(p.target).attributes() == p.target_scene, p.id
        s, t = p.source_scene["objects"], p.target_scene["objects"]
        assert 1 <= len(s) <= 3 and 1 <= len(t) <= 3
        for o in s + t:  # training combinations, sampled sizes
            assert (o["color"], o.get("pattern", "solid"), o["shape"]) not in heldout and o["size"] != "small"
        if p.category in ("remove", "add"):
            fewer, more = (t, s) if p.category == "remove" else (s, t)
            assert len(more) == len(fewer) + 1 and fewer == [o for j, o in enumerate(more) if j != p.object]
            assert _differences({**p.source_scene, "objects": []}, {**p.target_scene, "objects": []}) == set()
        else:
            assert _differences(p.source_scene, p.target_scene) == {(p.object, p.attribute)}, p.id
            edited = p.target_scene if p.object is None else t[p.object]
            assert edited.get(p.attribute, P.ATTRIBUTE_DEFAULTS.get(p.attribute)) == p.value
    # the rich world's variety is there: three-object scenes, composites, patterns, textures
    scenes = [p.source_scene for p in pairs]
    assert any(len(s["objects"]) == 3 for s in scenes) and any("texture" in s for s in scenes)
    assert {o["shape"] for s in scenes for o in s["objects"]} >= {"house", "snowman", "tree"}
    assert {o.get("pattern") for s in scenes for o in s["objects"]} >= {"striped", "dotted", "checked"}


def test_shipped_rich_pairs_file_is_make_pairs(tmp_path):
    made = P.write_pairs(P.make_pairs(world="rich"), tmp_path / "rich.jsonl")
    assert made.read_bytes() == P.pairs_file("rich").read_bytes()
    assert P.pairs_file("classic") == P.PAIRS_FILE
    with pytest.raises(ValueError, match="no shipped pairs for world 'neon'"):
        P.pairs_file("neon")


def test_rich_layouts_keep_the_sampler_gaps():
    from difflens.world.scene import ObjectSpec

    world = P._world("rich")
    huge = [ObjectSpec("square", "red", "huge", cell) for cell in ("top left", "top")]
    assert world.layout(tuple(huge)) is None  # side by side they touch: no such scene is ever a target
    apart = world.layout((huge[0], ObjectSpec("circle", "blue", "large", "bottom right")))
    assert apart is not None and apart[0].offset != (0.0, 0.0)  # shifted off the border, as the sampler does


def test_rich_pairs_and_words_pass_validation_but_unknown_ones_do_not(tmp_path):
    rows = [p.to_json() for p in P.make_pairs(1, categories=("pattern", "texture"), world="rich")]
    assert len(P.read_pairs(_write(tmp_path, rows), vocabulary=_rich_vocabulary())) == 2
    vocab = P.model_vocabulary(adapter("embedded-tiny"))  # a classic model does not know the rich words
    with pytest.raises(ValueError, match=r"unknown word\(s\)"):
        P.read_pairs(_write(tmp_path, rows), vocabulary=vocab)
    bad = json.loads(json.dumps(rows[1]))
    bad["value"] = "wavy"
    bad["target_scene"]["texture"] = "wavy"
    with pytest.raises(ValueError, match="target_scene: unknown texture 'wavy'"):
        P.read_pairs(_write(tmp_path, [bad], "bad.jsonl"))
    bad = json.loads(json.dumps(rows[1]))
    bad["value"] = bad["source_scene"].get("texture", "plain")
    with pytest.raises(ValueError, match="do not differ by the stated texture edit"):
        P.read_pairs(_write(tmp_path, [bad], "bad.jsonl"))


# ------------------------------------------------------------------ scoring
def _obj(color, shape, size, position, area=100):
    return ObjectReading(color=color, shape=shape, size=size, position=position, area=area, centroid=(0, 0),
                         mask=np.zeros((4, 4), bool))


def _pair(category, source, target, obj, value):
    return P.EditPair(id="x", category=category, source="s", target="t", source_scene=source, target_scene=target,
                      object=obj, attribute=P.ATTRIBUTE_OF[category], value=value)


def _scene(bg, *objs):
    return {"background": bg, "objects": [dict(zip(("color", "shape", "size", "position"), o)) for o in objs]}


RED = ("red", "circle", "small", "left")
BLUE_SQ = ("blue", "square", "large", "top right")


def test_judge_colour_edit():
    pair = _pair("color", _scene("white", RED, BLUE_SQ), _scene("white", ("green", *RED[1:]), BLUE_SQ), 0, "green")
    clean = SceneReading("white", [_obj("green", "circle", "small", "left"), _obj(*BLUE_SQ)])
    assert judge(pair, clean) == {"success": True, "preservation": True, "clean": True}
    other_changed = SceneReading("white", [_obj("green", "circle", "small", "left"), _obj("red", *BLUE_SQ[1:])])
    assert judge(pair, other_changed) == {"success": True, "preservation": False, "clean": False}
    shape_changed = SceneReading("white", [_obj("green", "square", "small", "left"), _obj(*BLUE_SQ)])
    assert judge(pair, shape_changed) == {"success": True, "preservation": False, "clean": False}
    unchanged = SceneReading("white", [_obj(*RED), _obj(*BLUE_SQ)])
    assert judge(pair, unchanged) == {"success": False, "preservation": True, "clean": False}
    gone = SceneReading("white", [_obj(*BLUE_SQ)])
    assert judge(pair, gone) == {"success": False, "preservation": False, "clean": False}
    speck = SceneReading("white", [_obj("green", "circle", "small", "left"), _obj(*BLUE_SQ),
                                   _obj("red", "circle", "small", "bottom")])
    assert judge(pair, speck)["preservation"] is False  # a new object is a change


def test_judge_background_remove_add_move():
    bg = _pair("background", _scene("white", RED), _scene("black", RED), None, "black")
    assert judge(bg, SceneReading("black", [_obj(*RED)]))["clean"]
    assert judge(bg, SceneReading("black", [_obj("blue", *RED[1:])])) == {"success": True, "preservation": False,
                                                                          "clean": False}
    rm = _pair("remove", _scene("white", RED, BLUE_SQ), _scene("white", BLUE_SQ), 0, "absent")
    assert judge(rm, SceneReading("white", [_obj(*BLUE_SQ)]))["clean"]
    assert judge(rm, SceneReading("white", [_obj(*RED), _obj(*BLUE_SQ)]))["success"] is False
    add = _pair("add", _scene("white", RED), _scene("white", RED, BLUE_SQ), 1, "present")
    wrong_colour = SceneReading("white", [_obj(*RED), _obj("green", *BLUE_SQ[1:])])
    assert judge(add, wrong_colour) == {"success": True, "preservation": True, "clean": False}
    assert judge(add, SceneReading("white", [_obj(*RED), _obj(*BLUE_SQ)]))["clean"]
    mv = _pair("move", _scene("white", RED), _scene("white", (*RED[:3], "center")), 0, "center")
    assert judge(mv, SceneReading("white", [_obj(*RED[:3], "center")]))["clean"]
    stayed = SceneReading("white", [_obj(*RED)])
    assert judge(mv, stayed) == {"success": False, "preservation": True, "clean": False}
    both = SceneReading("white", [_obj(*RED), _obj(*RED[:3], "center")])
    assert judge(mv, both)["success"] is False


def test_facts_agree_between_scenes_and_readings():
    scene = _scene("gray", RED, BLUE_SQ)
    assert facts(scene) == facts(SceneReading("gray", [_obj(*BLUE_SQ), _obj(*RED)]))


def _rich_obj(color, shape, size, position, pattern="solid"):
    return ObjectReading(color=color, shape=shape, size=size, position=position, area=100, centroid=(0, 0),
                         mask=np.zeros((4, 4), bool), pattern=pattern)


def _rich_scene(bg, texture, *objs):
    """A scene dict as `Scene.attributes()` writes it: texture and patterns only where not plain / solid."""
    objects = [{**dict(zip(("color", "shape", "size", "position"), o[:4])),
                **({"pattern": o[4]} if o[4] != "solid" else {})} for o in objs]
    return {"background": bg, "objects": objects, **({"texture": texture} if texture != "plain" else {})}


HOUSE = ("red", "house", "huge", "left", "striped")
TREE = ("blue", "tree", "large", "top right", "solid")


def test_rich_facts_hold_patterns_and_textures_and_classic_facts_do_not():
    scene = _rich_scene("pink", "dotted", HOUSE, TREE)
    rich = facts(scene, "rich")
    assert rich[("texture",)] == "dotted" and rich[("left", "pattern")] == "striped"
    assert rich[("top right", "pattern")] == "solid" and rich[("center", "pattern")] is None
    assert rich == facts(SceneReading("pink", [_rich_obj(*TREE), _rich_obj(*HOUSE)], texture="dotted"), "rich")
    classic = facts(_scene("gray", RED, BLUE_SQ))
    assert ("texture",) not in classic and not any(k[-1] == "pattern" for k in classic)  # as they always were
    assert classic == facts(SceneReading("gray", [_rich_obj(*BLUE_SQ, "solid"), _rich_obj(*RED, "solid")]))
    assert set(facts(_scene("gray", RED), "rich")) - set(facts(_scene("gray", RED))) == \
        {("texture",), *[(c, "pattern") for c in __import__("difflens.world.scene", fromlist=["x"]).POSITIONS]}


def test_judge_pattern_and_texture_edits():
    from difflens.steering.editing.scoring import edit_keys

    pat = _pair("pattern", _rich_scene("pink", "dotted", HOUSE, TREE),
                _rich_scene("pink", "dotted", (*HOUSE[:4], "checked"), TREE), 0, "checked")
    assert edit_keys(pat) == ([("left", "pattern")], [("left", "pattern")])
    done = SceneReading("pink", [_rich_obj(*HOUSE[:4], "checked"), _rich_obj(*TREE)], texture="dotted")
    assert judge(pat, done, "rich") == {"success": True, "preservation": True, "clean": True}
    other = SceneReading("pink", [_rich_obj(*HOUSE[:4], "checked"), _rich_obj(*TREE[:4], "dotted")], texture="dotted")
    assert judge(pat, other, "rich") == {"success": True, "preservation": False, "clean": False}
    plain = SceneReading("pink", [_rich_obj(*HOUSE[:4], "checked"), _rich_obj(*TREE)], texture="plain")
    assert judge(pat, plain, "rich")["preservation"] is False  # the background texture is kept too
    tex = _pair("texture", _rich_scene("pink", "dotted", HOUSE), _rich_scene("pink", "plain", HOUSE), None, "plain")
    assert edit_keys(tex) == ([("texture",)], [("texture",)])
    assert judge(tex, SceneReading("pink", [_rich_obj(*HOUSE)]), "rich")["clean"]
    assert judge(tex, SceneReading("pink", [_rich_obj(*HOUSE)], texture="dotted"), "rich")["success"] is False
    recoloured = SceneReading("cyan", [_rich_obj(*HOUSE)], texture="plain")
    assert judge(tex, recoloured, "rich") == {"success": True, "preservation": False, "clean": False}
    mv = _pair("move", _rich_scene("pink", "plain", HOUSE), _rich_scene("pink", "plain", (*HOUSE[:3], "right", HOUSE[4])),
               0, "right")
    lost_stripes = SceneReading("pink", [_rich_obj(*HOUSE[:3], "right", "solid")])
    assert judge(mv, lost_stripes, "rich") == {"success": True, "preservation": False, "clean": False}
    assert judge(mv, lost_stripes)["preservation"] is True  # the classic facts have no patterns


def test_psnr_outside_and_bootstrap():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[:4] = 110  # differs only in the top half
    top = np.zeros((8, 8), bool)
    top[:4] = True
    assert psnr_outside(b, a, top) == PSNR_CAP
    assert psnr_outside(b, a, None) == pytest.approx(10 * np.log10(255 ** 2 / 50.0))
    assert np.isnan(psnr_outside(b, a, np.ones((8, 8), bool)))
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0, 1] * 20, seed=3)
    assert lo < 0.5 < hi and 0.25 < lo and hi < 0.75
    s = summarise([{"success": True, "preservation": False, "clean": False, "psnr_outside": 30.0},
                   {"success": False, "preservation": False, "clean": False, "psnr_outside": None}], n_boot=50)
    assert s["n"] == 2 and s["success"] == 0.5 and s["psnr_outside"] == 30.0 and s["clean_lo"] == 0.0


# ------------------------------------------------------------------ the intervention
def test_token_deltas_tile_over_a_guidance_batch():
    d = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    iv = token_deltas("double.0.img.out", {1: d}, halves="cond")
    value = torch.zeros(4, 3, 4)  # [uncond; cond] of 2 images
    assert iv.apply(value, 0, cfg_batch=True) is value  # step 0: no delta
    out = iv.apply(value, 1, cfg_batch=True)
    assert torch.equal(out[2:], d) and out[:2].abs().max() == 0
    both = TokenDeltas("double.0.img.out", torch.zeros(4), steps=[1], deltas={1: d})
    assert torch.equal(both.apply(value, 1, cfg_batch=True), torch.cat([d, d]))


# ------------------------------------------------------------------ end to end
def _tiny_dictionary(a, tmp_path):
    from difflens.dictionaries import SAEConfig, TopKSAE, save_dictionary

    site = "double.0.img.out"
    sae = TopKSAE(a.site(site).dim, SAEConfig(num_latents=64, k=4, normalization="none"), seed=0)
    sae.meta.update(site=site, step=1)
    save_dictionary(sae, tmp_path / "run" / "dictionaries" / "sae_none")
    return tmp_path / "run"


def test_tiny_benchmark_end_to_end_through_the_cli(tmp_path, capsys):
    from difflens.cli import run_parser
    from difflens.steering.editing.cli import register

    a = adapter("embedded-tiny")
    run = _tiny_dictionary(a, tmp_path)
    pairs = P.write_pairs([p for p in P.make_pairs(2, categories=("color", "remove", "background"))],
                          tmp_path / "pairs.jsonl")
    parser = argparse.ArgumentParser(prog="difflens")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "res" / "results.json"
    rc = run_parser(parser, ["bench", "edits", "--run", str(run), "--model", "embedded-tiny", "--pairs", str(pairs),
                             "--n", "2", "--num-steps", "2", "--ks", "2", "--strengths", "1,3", "--dense-strengths", "1",
                             "--no-require-faithful", "--n-boot", "20", "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    keys = {"category", "method", "site", "strength", "k", "n", "success", "preservation", "clean", "psnr_outside"}
    rows = res["rows"]
    assert all(keys <= set(r) for r in rows)
    got = Counter((r["category"], r["method"]) for r in rows)
    for cat in ("color", "remove", "background"):
        assert got[(cat, "sae_none")] == 2 and got[(cat, "random")] == 2 and got[(cat, "dense")] == 1
        assert got[(cat, "swap")] == 1
    assert all(r["n"] == 2 for r in rows)
    assert all(r["clean_lo"] <= r["clean"] <= r["clean_hi"] for r in rows)
    assert (out.parent / "results_curves.png").exists()
    printed = capsys.readouterr().out
    assert "clean %" in printed and "sae_none" in printed and "random" in printed


def test_bad_settings_fail_before_generation(tmp_path, monkeypatch):
    from difflens.steering.editing.run import BenchConfig, run_edit_bench

    a = adapter("embedded-tiny")
    run = _tiny_dictionary(a, tmp_path)
    monkeypatch.setattr(a, "generate", lambda *args, **kw: pytest.fail("generated before validating"))
    with pytest.raises(ValueError, match=r"steps \[5\] lie outside this run's steps 0..1"):
        run_edit_bench(BenchConfig(run=str(run), steps="5", num_steps=2, out=""), model=a)
    with pytest.raises(ValueError, match="no dictionary named sae_pca"):
        run_edit_bench(BenchConfig(run=str(run), methods=["sae_pca"], out=""), model=a)
    with pytest.raises(ValueError, match="no pairs of categories"):
        run_edit_bench(BenchConfig(run=str(run), categories=["paint"], out=""), model=a)
    with pytest.raises(ValueError, match="empty step window"):
        run_edit_bench(BenchConfig(run=str(run), steps="1:1", num_steps=2, out=""), model=a)


def test_group_results_merge(tmp_path):
    from difflens.steering.editing.run import BenchConfig, format_bench_table, merge_results, run_edit_bench

    a = adapter("embedded-tiny")
    run = _tiny_dictionary(a, tmp_path)
    pairs = P.write_pairs(P.make_pairs(1, categories=("size", "move")), tmp_path / "pairs.jsonl")
    common = dict(run=str(run), pairs=str(pairs), n=1, num_steps=2, ks=[2], strengths=[1.0], dense_strengths=[1.0],
                  require_faithful=False, n_boot=10, quiet=True)
    files = []
    for cat in ("size", "move"):
        files.append(tmp_path / f"{cat}.json")
        run_edit_bench(BenchConfig(categories=[cat], out=str(files[-1]), **common), model=a)
    merged = merge_results(files, tmp_path / "all" / "results.json")
    assert set(merged["pair_counts"]) == {"size", "move"}
    assert {r["category"] for r in merged["rows"]} == {"size", "move"}
    assert json.loads((tmp_path / "all" / "results.json").read_text())["rows"] == merged["rows"]
    assert "random" in format_bench_table(merged["rows"], merged["random_reference"])
    with pytest.raises(ValueError, match="share categories"):
        merge_results([files[0], files[0]], tmp_path / "x.json")
    rich = json.loads(files[1].read_text())
    assert rich["world"] == "classic"
    files[1].write_text(json.dumps({**rich, "world": "rich"}))
    with pytest.raises(ValueError, match=r"models of different worlds \(classic, rich\)"):
        merge_results(files, tmp_path / "x.json")


def test_a_run_that_keeps_no_pair_still_writes_its_table_and_curves(tmp_path):
    from difflens.steering.editing.run import BenchConfig, curves, format_bench_table

    path = curves([], tmp_path / "curves.png")  # every category kept 0 pairs (e.g. no faithful source)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert "psnr out" in format_bench_table([])
    with pytest.raises(ValueError, match="n_boot must be >= 1"):
        BenchConfig(n_boot=0)


def _tiny_rich_adapter():
    """The tiny embedded model, untrained, of the rich world (its tokenizer knows the rich words)."""
    from dataclasses import asdict

    from difflens.adapters.embedded import EmbeddedAdapter
    from difflens.embedded import ShapesModelConfig, ShapesPipeline

    config = ShapesModelConfig(**{**asdict(ShapesModelConfig.tiny()), "world": "rich", "vocab": [], "max_text_len": 36})
    return EmbeddedAdapter(ShapesPipeline.random(config, seed=0), name="embedded-tiny-rich")


@pytest.mark.parametrize("world", ["classic", "rich"])
def test_the_default_pairs_file_is_the_model_worlds(world, monkeypatch):
    from difflens.steering.editing import run as R

    class Read(Exception):
        pass

    def spy(path, vocabulary=None):
        raise Read(path)

    monkeypatch.setattr(R, "read_pairs", spy)
    model = _tiny_rich_adapter() if world == "rich" else adapter("embedded-tiny")
    with pytest.raises(Read) as got:
        R.run_edit_bench(R.BenchConfig(methods=["swap"], out=""), model=model)
    assert got.value.args[0] == P.pairs_file(world)
    with pytest.raises(Read) as got:  # an explicit file still wins
        R.run_edit_bench(R.BenchConfig(pairs="mine.jsonl", methods=["swap"], out=""), model=model)
    assert str(got.value.args[0]) == "mine.jsonl"


def test_tiny_rich_benchmark_reads_and_judges_in_the_rich_world(tmp_path, monkeypatch):
    import difflens.world.oracle as oracle
    from difflens.steering.editing.run import BenchConfig, run_edit_bench

    worlds = []
    read = oracle.read_image
    monkeypatch.setattr(oracle, "read_image", lambda image, world="classic": worlds.append(world) or read(image, world))
    pairs = P.write_pairs(P.make_pairs(1, categories=("pattern", "texture"), world="rich"), tmp_path / "pairs.jsonl")
    res = run_edit_bench(BenchConfig(pairs=str(pairs), methods=["dense", "swap"], sites=["double.0.img.out"], n=1,
                                     num_steps=2, dense_strengths=[1.0], require_faithful=False, n_boot=10, quiet=True,
                                     out=""), model=_tiny_rich_adapter())
    assert res["world"] == "rich" and worlds and set(worlds) == {"rich"}
    assert {(r["category"], r["method"]) for r in res["rows"]} == {(c, m) for c in ("pattern", "texture")
                                                                  for m in ("dense", "swap")}
    assert all(r["success"] in (0.0, 1.0) and r["n"] == 1 for r in res["rows"])
