"""Steering: add / clamp / scale / ablate do what they say, only on the named tokens, steps and CFG halves;
strength units convert as documented; bad edits fail before any generation; `difflens steer` writes its grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import adapter

from difflens.adapters import Capture
from difflens.dictionaries.io import save_dictionary
from difflens.dictionaries.topk_sae import SAEConfig, TopKSAE
from difflens.steering import Edit, parse_region, parse_steps, steer, typical_activation
from difflens.steering.hooks import LatentEdit

SITE = "double.0.img.out"
PROMPTS = ["a small red circle on the left on a white background", "a large blue square at the top on a black background"]
SEEDS = [3, 4]


def orthonormal_sae(width: int, seed: int = 0) -> TopKSAE:
    """A tied SAE with orthonormal decoder rows and k = all latents: encode(x)_i = relu(d_i . x), exactly
    invertible on active latents, so a clamp can be checked by re-encoding."""
    sae = TopKSAE(width, SAEConfig(num_latents=width, k=width, normalization="none"), seed=seed)
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q.T)
    sae.meta = {"site": SITE, "step": 0}
    return sae


def captured(model, edits_or_none, sae, num_steps=3, **kw):
    """{step: acts_BTD} at SITE while generating PROMPTS with the edit item applied (None: unsteered)."""
    from difflens.steering import steer as steer_fn

    got = {}
    grab = Capture([SITE], lambda n, st, x: got.__setitem__(st, x.clone()))
    if edits_or_none is None:
        model.generate(PROMPTS, SEEDS, num_steps=num_steps, capture=grab, **kw)
        return got
    # steer() generates the edited images with its own hooks; add a capture by wrapping generate
    original = model.generate

    def generate(*args, **kwargs):
        if kwargs.get("interventions"):
            kwargs["capture"] = grab
        return original(*args, **kwargs)

    model.generate = generate
    try:
        result = steer_fn(model, sae, [edits_or_none], PROMPTS, SEEDS, num_steps=num_steps,
                          guidance_scale=kw.get("guidance"))
    finally:
        del model.generate
    return got, result


@pytest.fixture(scope="module")
def model():
    return adapter("embedded-tiny")


@pytest.fixture(scope="module")
def sae(model):
    return orthonormal_sae(model.site(SITE).dim)


def test_ablating_an_inactive_latent_leaves_the_images_bit_identical(model, sae):
    base = model.generate(PROMPTS, SEEDS, num_steps=3)
    dead = orthonormal_sae(sae.d_in)
    with torch.no_grad():
        dead.b_enc[0] = -1e6  # latent 0 never fires
    result = steer(model, dead, [Edit(0, "ablate"), Edit(0, "scale", 5.0)], PROMPTS, SEEDS, num_steps=3)
    assert np.array_equal(result.baseline, base)
    for images in result.images:
        assert np.array_equal(images, base)
    assert result.records[0][0]["edited_token_steps"] == 0


def test_add_changes_only_the_region_tokens_from_the_first_edited_step(model, sae):
    base = captured(model, None, sae)
    region = (0.5, 0.0, 1.0, 0.5)  # right half, top half
    got, result = captured(model, Edit(7, "add", 2.0, unit="raw", region=region, steps=(1, 3)), sae)
    grid = model.site(SITE).grid
    weights = torch.from_numpy(parse_region(region, grid).reshape(-1))
    assert torch.equal(got[0], base[0])  # before the window: untouched
    direction = sae.normalizer.to_residual_directions(sae.decoder_rows())[7]
    want = weights.reshape(1, -1, 1) * (2.0 * direction).reshape(1, 1, -1)
    torch.testing.assert_close(got[1] - base[1], want.expand_as(base[1]), atol=1e-4, rtol=1e-4)
    assert (got[1] - base[1])[:, weights == 0].abs().max() == 0
    assert result.records[0][0]["tokens"] == int(weights.sum()) == grid[0] * grid[1] // 4


def test_clamp_sets_the_reencoded_activation(model, sae):
    value = 3.5
    got, _ = captured(model, Edit(4, "clamp", value, unit="raw", region="active", steps=(0, 1)), sae)
    base = captured(model, None, sae)
    before = sae.encode(base[0]).to_dense(sae.num_latents)[..., 4]
    after = sae.encode(got[0]).to_dense(sae.num_latents)[..., 4]
    active = before > 0
    assert active.any() and (~active).any()
    torch.testing.assert_close(after[active], torch.full_like(after[active], value), atol=1e-4, rtol=1e-4)
    assert torch.equal(after[~active], before[~active])  # 'active' region: inactive tokens untouched


def test_scale_and_ablate_change_only_that_latents_contribution(model, sae):
    base = captured(model, None, sae)
    for mode, strength, factor in (("scale", 2.0, 2.0), ("ablate", 0.0, 0.0)):
        got, _ = captured(model, Edit(4, mode, strength, steps=(0, 1)), sae)
        codes_before = sae.encode(base[0]).to_dense(sae.num_latents)
        codes_after = sae.encode(got[0]).to_dense(sae.num_latents)
        torch.testing.assert_close(codes_after[..., 4], factor * codes_before[..., 4], atol=1e-4, rtol=1e-4)
        others = torch.arange(sae.num_latents) != 4
        torch.testing.assert_close(codes_after[..., others], codes_before[..., others], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("halves,want", [("both", [1, 1]), ("cond", [0, 1]), ("contrast", [-1, 1])])
def test_guidance_halves(sae, halves, want):
    direction = sae.normalizer.to_residual_directions(sae.decoder_rows())[2]
    edit = LatentEdit(site=SITE, vector_D=direction, halves=halves, dictionary=sae, latent=2, mode="add", amount=1.5)
    acts = torch.randn(4, 6, sae.d_in)  # [uncond x2; cond x2]
    diff = edit.apply(acts, 0, cfg_batch=True) - acts
    for b, sign in enumerate([want[0]] * 2 + [want[1]] * 2):
        torch.testing.assert_close(diff[b], (sign * 1.5 * direction).expand(6, -1), atol=1e-6, rtol=1e-6)
    # without a CFG batch every image is conditional
    torch.testing.assert_close(edit.apply(acts, 0) - acts, (1.5 * direction).expand(4, 6, -1), atol=1e-6, rtol=1e-6)


def test_steering_under_guidance_runs_and_cond_differs_from_both(model, sae):
    out = steer(model, sae, [Edit(1, "add", 4.0, unit="raw", guidance="cond"),
                             Edit(1, "add", 4.0, unit="raw", guidance="both")], PROMPTS, SEEDS, num_steps=2,
                guidance_scale=3.0)
    assert not np.array_equal(out.images[0], out.images[1])
    assert not np.array_equal(out.images[0], out.baseline)


def test_strength_units(model, sae):
    class FakeIndex:
        path = "fake"

        def top_images(self, latent):
            return [{"image_id": 0, "step": 0, "score": 2.0}, {"image_id": 1, "step": 0, "score": 4.0},
                    {"image_id": 2, "step": 5, "score": 100.0}]

    assert typical_activation(FakeIndex(), 3, step=0) == pytest.approx(3.0)  # the edit's step only
    assert typical_activation(FakeIndex(), 3, step=9) == pytest.approx(106 / 3)  # no such step: every step
    out = steer(model, sae, [Edit(3, "add", 2.0, unit="typical", steps=(0, 1)),
                             Edit(3, "add", 0.5, unit="norm", steps=(0, 1))], PROMPTS, SEEDS, num_steps=2,
                index=FakeIndex())
    assert out.records[0][0]["amount"] == pytest.approx(6.0)
    base = captured(model, None, sae, num_steps=2)
    mean_norm = float(torch.cat([base[0], base[1]]).norm(dim=-1).mean())
    direction = sae.normalizer.to_residual_directions(sae.decoder_rows())[3]
    assert out.records[1][0]["amount"] * float(direction.norm()) == pytest.approx(0.5 * mean_norm, rel=1e-4)


def test_regions_and_steps_parse():
    grid = (4, 4)
    box = parse_region((0.0, 0.0, 0.5, 0.5), grid)
    assert box.sum() == 4 and box[:2, :2].all()
    rows, cols = parse_region("cells:0,1;3,3", grid).nonzero()
    assert rows.tolist() == [0, 3] and cols.tolist() == [1, 3]
    mask = np.zeros((64, 64), bool)
    mask[:24, :16] = True  # rows 0..1.5 of 4, col 0
    w = parse_region(mask, grid)
    assert w[0, 0] == 1 and w[1, 0] == 0.5 and w[2:, :].sum() == 0 and w[:, 1:].sum() == 0
    assert parse_region(None, grid) is None and parse_region("active", None) == "active"
    assert parse_steps(None, 4) == [0, 1, 2, 3]
    assert parse_steps("1:3", 8) == [1, 2]
    assert parse_steps((0.0, 0.5), 8) == [0, 1, 2, 3]
    assert parse_steps("0:0.25", 8) == [0, 1]


@pytest.mark.parametrize("edit,message", [
    (Edit(10_000), "outside the dictionary"),
    (Edit(0, region=(0.5, 0.5, 1.5, 1.0)), "0 <= x0 < x1 <= 1"),
    (Edit(0, steps=(2, 2)), "empty"),
    (Edit(0, steps=(0, 9)), "outside this run's steps"),
    (Edit(0, site="double.0.img.mlp"), "width"),
    (Edit(0, mode="boost"), "mode must be one of"),
    (Edit(0, region="cells:9,9"), "outside the 8x8 token grid"),
    (Edit(0, unit="typical"), "feature index"),
])
def test_bad_edits_fail_before_any_generation(model, sae, edit, message, monkeypatch):
    def no_generation(*_a, **_k):
        raise AssertionError("generated before validating")

    monkeypatch.setattr(model, "generate", no_generation)
    with pytest.raises(ValueError, match=message):
        steer(model, sae, [Edit(0, "ablate"), edit], PROMPTS, SEEDS, num_steps=3)


def test_cli_writes_the_grid_and_what_was_done(tmp_path, sae):
    from difflens.cli import main

    folder = save_dictionary(sae, tmp_path / "sae")
    out, js = tmp_path / "grid.png", tmp_path / "steer.json"
    code = main(["steer", "--run", str(folder), "--model", "embedded-tiny", "--latent", "2", "--sweep=-4,4",
                 "--unit", "raw", "--region", "0.25,0.25,0.75,0.75", "--steps", "0:2", "--num-steps", "3",
                 "--prompt", PROMPTS[0], "-o", str(out), "--json", str(js)])
    assert code == 0 and out.stat().st_size > 0
    done = json.loads(js.read_text())
    assert [r[0]["strength"] for r in done["records"]] == [-4.0, 4.0]
    assert done["records"][0][0]["steps"] == [0, 1] and done["records"][0][0]["tokens"] == 16
    assert len(done["readings"]["steered"]) == 2  # the oracle read every image (embedded model)
    assert main(["steer", "--run", str(folder), "--model", "embedded-tiny", "--latent", "99", "-o", str(out)]) == 2


def test_sae_latent_activation_matches_encode():
    sae = TopKSAE(24, SAEConfig(num_latents=96, k=7), seed=2)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    acts = torch.randn(3, 50, 24, generator=torch.Generator().manual_seed(0))
    dense = sae.encode(acts).to_dense(96)
    for latent in (0, 17, 95):
        torch.testing.assert_close(sae.latent_activation(acts, latent), dense[..., latent])


def test_oracle_regions_follow_the_unsteered_image(model, sae):
    out = steer(model, sae, [Edit(1, "add", 1.0, unit="raw", region="background"),
                             Edit(1, "add", 1.0, unit="raw", region="object:0")], PROMPTS, SEEDS, num_steps=2)
    background, obj = out.regions[0], out.regions[1]
    assert background.shape == obj.shape == (2, 8, 8)
    assert ((background + obj) <= 1 + 1e-6).all()  # object 0 lies outside the background


def test_reading_dict_keeps_the_rich_worlds_pattern_and_texture():
    from difflens.steering.steer import reading_dict
    from difflens.world import parse_caption, read_image, render

    scene = parse_caption("a large striped red square in the center on a cyan dotted background")
    image, _ = render(scene)
    rich = reading_dict(read_image(image, world="rich"), "rich")
    assert rich["texture"] == "dotted" and rich["objects"][0]["pattern"] == "striped"
    assert rich["objects"][0]["color"] == "red" and rich["background"] == "cyan"
    plain, _ = render(parse_caption("a large red square in the center on a white background"))
    classic = reading_dict(read_image(plain))
    assert set(classic) == {"background", "objects"} and "pattern" not in classic["objects"][0]
