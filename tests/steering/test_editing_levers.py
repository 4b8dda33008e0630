"""The levers of clean feature edits (issue 26): ground-truth latent selection, clamping instead of adding,
norm-preserving edits, and several sites at once, each checked for doing what it says."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import adapter

from difflens.steering.editing import pairs as P
from difflens.steering.editing.methods import FeatureEdit, LatentClamp, norm_preserving, token_deltas
from difflens.steering.editing.selection import (chosen_by_truth, clamp_values, edit_concepts, random_clamp_values,
                                                 truth_latents, typical_activation)


def _colour_pair(src="red", tgt="blue"):
    scene = lambda c: {"background": "white", "objects": [{"shape": "circle", "color": c, "size": "large",  # noqa: E731
                                                           "position": "center"}]}
    return P.EditPair(id="c", category="color", source=f"a large {src} circle", target=f"a large {tgt} circle",
                      source_scene=scene(src), target_scene=scene(tgt), object=0, attribute="color", value=tgt)


# ------------------------------------------------------------------ ground-truth selection
def test_truth_selection_picks_the_concepts_precise_latents():
    truth = {"latents": [{"latent": 3, "precise": True, "precise_concept": "color:blue", "upper_precision": 0.95},
                         {"latent": 9, "precise": True, "precise_concept": "color:blue", "upper_precision": 0.99},
                         {"latent": 4, "precise": True, "precise_concept": "color:red", "upper_precision": 0.97},
                         {"latent": 5, "precise": False, "precise_concept": "color:red", "upper_precision": 0.5},
                         {"latent": 6, "precise": True, "precise_concept": "shape:circle", "upper_precision": 1.0}],
             "coverage_latent": {"color:blue": 1, "color:green": 7}}
    latents = truth_latents(truth)
    assert latents["color:blue"] == [9, 3]  # most precise first; the best-F1 fallback is not needed
    assert latents["color:green"] == [7]  # no precise latent: the concept's best single latent
    assert 5 not in latents.get("color:red", [])
    pair = _colour_pair("red", "blue")
    assert edit_concepts(pair) == ("color:red", "color:blue")
    top, bottom = chosen_by_truth(latents, edit_concepts(pair), k=4)
    assert top.tolist() == [9, 3] and bottom.tolist() == [4]
    top1, _ = chosen_by_truth(latents, edit_concepts(pair), k=1)
    assert top1.tolist() == [9]
    move = P.EditPair(id="m", category="move", source="a", target="b", source_scene={"objects": []},
                      target_scene={"objects": []}, object=0, attribute="position", value="top")
    assert edit_concepts(move) is None and all(len(t) == 0 for t in chosen_by_truth(latents, None, 4))


# ------------------------------------------------------------------ clamping
def test_clamp_values_set_top_latents_to_their_typical_target_activation_and_ablate_bottom_ones():
    T, F = 4, 6
    target = torch.zeros(T, F)
    target[:, 2] = torch.tensor([2.0, 4.0, 0.0, 100.0])  # token 3 lies outside the mask; token 2 does not fire
    mask = torch.tensor([1.0, 1, 1, 0])
    assert typical_activation(target, mask)[2] == pytest.approx(3.0)
    v = clamp_values(target, torch.tensor([2]), torch.tensor([5]), mask, m1=2.0)
    assert v[2] == pytest.approx(6.0) and v[5] == 0 and torch.isnan(v[[0, 1, 3, 4]]).all()
    g = torch.Generator().manual_seed(0)
    r = random_clamp_values(v, torch.tensor([2]), torch.tensor([5]), g)
    assert (~torch.isnan(r)).sum() == 2 and sorted(r[~torch.isnan(r)].tolist()) == [0.0, 6.0]


def test_clamp_sets_the_latents_code_to_the_value_on_masked_tokens_only():
    from difflens.dictionaries import SAEConfig, TopKSAE

    D, F, B, T = 8, 16, 2, 5
    sae = TopKSAE(D, SAEConfig(num_latents=F, k=4, normalization="none"), seed=0)
    dirs = sae.residual_directions()
    value = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    codes = sae.encode(value.reshape(-1, D)).to_dense(F).reshape(B, T, F)
    f, g = int(codes[0, 0].argmax()), int(codes[0, 0].argmin())  # one active latent (ablated), one set to 5
    values = torch.full((B, F), float("nan"))
    values[:, f], values[:, g] = 0.0, 5.0
    mask = torch.tensor([[1.0, 1, 0, 0, 1], [0, 1, 1, 1, 1]])
    delta = LatentClamp(sae, dirs, values, mask).delta(value)
    # latent f's and g's contributions a_f d_f become value_f d_f: the delta is (value - code) d per masked token
    want = (0.0 - codes[..., f])[..., None] * dirs[f] + (5.0 - codes[..., g])[..., None] * dirs[g]
    torch.testing.assert_close(delta[mask > 0], want[mask > 0])
    assert delta[mask == 0].abs().max() == 0
    iv = token_deltas("double.0.img.out", {}, clamps={3: LatentClamp(sae, dirs, values, mask)})
    assert iv.steps == [3] and iv.apply(value, 2) is value
    torch.testing.assert_close(iv.apply(value, 3), value + delta)


# ------------------------------------------------------------------ norm-preserving edits
def test_norm_preserving_edits_keep_each_edited_tokens_norm_and_leave_the_rest_alone():
    gen = torch.Generator().manual_seed(2)
    value = torch.randn(2, 6, 8, generator=gen)
    delta = 3 * torch.randn(2, 6, 8, generator=gen)
    delta[:, 4:] = 0  # untouched tokens
    iv = token_deltas("double.0.img.out", {1: delta}, preserve_norm=True)
    out = iv.apply(value, 1)
    torch.testing.assert_close(out.norm(dim=-1), value.norm(dim=-1))  # every token keeps its norm
    assert torch.equal(out[:, 4:], value[:, 4:])
    cos = torch.nn.functional.cosine_similarity(out[:, :4], (value + delta)[:, :4], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # ...and points where the plain edit would
    plain = token_deltas("double.0.img.out", {1: delta}).apply(value, 1)
    assert not torch.allclose(plain.norm(dim=-1), value.norm(dim=-1))
    torch.testing.assert_close(norm_preserving(value, torch.zeros_like(value)), torch.zeros_like(value))


def test_feature_edit_refuses_unknown_levers():
    with pytest.raises(ValueError, match="selection must be"):
        FeatureEdit(selection="best")
    with pytest.raises(ValueError, match="apply must be"):
        FeatureEdit(apply="multiply")


# ------------------------------------------------------------------ the levers through the benchmark
def _two_dictionaries(a, tmp_path):
    """Two tiny SAEs at two sites of the tiny model, each with a truth.json naming colour latents."""
    from difflens.dictionaries import SAEConfig, TopKSAE, save_dictionary
    from difflens.world.scene import COLORS

    run = tmp_path / "run"
    for name, site in (("sae_a", "double.0.img.out"), ("sae_b", "single.0.img.out")):
        sae = TopKSAE(a.site(site).dim, SAEConfig(num_latents=64, k=4, normalization="none"), seed=0)
        sae.meta.update(site=site, step=1)
        folder = save_dictionary(sae, run / "dictionaries" / name)
        truth = {"latents": [{"latent": i, "precise": True, "precise_concept": f"color:{c}", "upper_precision": 1.0}
                             for i, c in enumerate(COLORS)], "coverage_latent": {}}
        (run / "dictionaries" / name / "truth.json").write_text(json.dumps(truth))
        assert folder
    return run


def _bench(a, run, pairs, out, **kw):
    from difflens.steering.editing.run import BenchConfig, run_edit_bench

    cfg = BenchConfig(run=str(run), pairs=str(pairs), n=2, num_steps=2, ks=[2], strengths=[1.0], methods=kw.pop(
        "methods", ["sae_a", "random"]), require_faithful=False, n_boot=10, quiet=True, out=str(out), **kw)
    return run_edit_bench(cfg, model=a)


def test_levers_through_the_tiny_benchmark(tmp_path):
    a = adapter("embedded-tiny")
    run = _two_dictionaries(a, tmp_path)
    pairs = P.write_pairs(P.make_pairs(2, categories=("color",)), tmp_path / "pairs.jsonl")
    base = _bench(a, run, pairs, tmp_path / "base.json")
    truth = _bench(a, run, pairs, tmp_path / "truth.json", selection="truth")
    by_truth = {r["pair"]: r for r in truth["pairs"] if r["method"] == "sae_a"}
    for p in P.read_pairs(pairs):  # the truth names one latent per colour: one added, one removed per pair
        assert by_truth[p.id]["latents_added"] == 1 and by_truth[p.id]["latents_subtracted"] == 1
    assert [r["latents_added"] for r in base["pairs"] if r["method"] == "sae_a"] == [2, 2]  # mean difference: k
    clamp = _bench(a, run, pairs, tmp_path / "clamp.json", apply="clamp", preserve_norm=True)
    assert {r["method"] for r in clamp["rows"]} == {"sae_a", "random"}
    assert clamp["config"]["apply"] == "clamp" and clamp["config"]["preserve_norm"]
    psnr = lambda res: [r["psnr_inside"] for r in res["pairs"] if r["method"] == "sae_a"]  # noqa: E731
    assert psnr(clamp) != psnr(base)  # another edit, other images
    joint = _bench(a, run, pairs, tmp_path / "joint.json", methods=["sae_a", "sae_b", "random"], together=True)
    sites = {(r["method"], r["site"]) for r in joint["rows"]}
    assert sites == {("sae_a+sae_b", "double.0.img.out+single.0.img.out"),
                     ("random", "double.0.img.out+single.0.img.out")}
    assert joint["random_reference"] == "sae_a+sae_b"
