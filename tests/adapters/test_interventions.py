"""Interventions: exact magnitudes at out and update sites, classifier-free guidance halves, step
restriction, and the validation that runs when hooks are installed (before the model does)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import adapter

from difflens.adapters import Capture, Intervention

PROMPTS = ["a small red circle on the left on a white background", "a large blue square at the top on a black background"]
SEEDS = [3, 4]


def run(a, sites, interventions=(), **kw):
    """Generate PROMPTS with `interventions`; returns {(site, step): acts_BTD} for `sites`."""
    got = {}
    a.generate(PROMPTS, seeds=SEEDS, capture=Capture(sites, lambda n, st, x: got.__setitem__((n, st), x.clone())),
               interventions=list(interventions), **kw)
    return got


def vector(dim: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def mask_T(tokens: int) -> torch.Tensor:
    """Tokens 0..9 fully on, token 10 at half weight, the rest off."""
    m = torch.zeros(tokens)
    m[:10] = 1
    m[10] = 0.5
    return m


def assert_added(diff_BTD: torch.Tensor, mask: torch.Tensor, delta_D: torch.Tensor):
    """diff == mask[t] * delta on every token (float rounding allowed), and exactly 0 where the mask is 0."""
    want = mask.reshape(1, -1, 1) * delta_D.reshape(1, 1, -1)
    torch.testing.assert_close(diff_BTD, want.expand_as(diff_BTD), atol=1e-5, rtol=1e-5)
    assert diff_BTD[:, mask == 0].abs().max() == 0


def test_out_intervention_changes_its_own_capture_by_scale_times_vector():
    a = adapter("embedded-tiny")
    site = "double.0.img.out"
    info = a.site(site)
    v, m, s = vector(info.dim), mask_T(info.tokens), 2.5
    base = run(a, [site], num_steps=2)
    steered = run(a, [site], [Intervention(site, v, m, steps=[0], scale=s)], num_steps=2)
    assert_added(steered[(site, 0)] - base[(site, 0)], m, s * v)


def test_update_intervention_adds_to_the_block_output():
    a = adapter("embedded-tiny")
    out, upd = "double.0.img.out", "double.0.img.update"
    info = a.site(upd)
    v, m, s = vector(info.dim), mask_T(info.tokens), -1.5
    sites = [out, upd, "double.0.txt.out"]
    base = run(a, sites, num_steps=2)
    steered = run(a, sites, [Intervention(upd, v, m, steps=[0], scale=s)], num_steps=2)
    # the block's input is untouched at step 0, so output and update both move by s * v
    assert_added(steered[(out, 0)] - base[(out, 0)], m, s * v)
    assert_added(steered[(upd, 0)] - base[(upd, 0)], m, s * v)
    assert torch.equal(steered[("double.0.txt.out", 0)], base[("double.0.txt.out", 0)])  # the other stream: untouched


def test_guidance_captures_the_conditional_half_and_intervenes_on_both():
    a = adapter("embedded-tiny")
    site = "double.0.img.out"
    info = a.site(site)
    v, m, s = vector(info.dim), mask_T(info.tokens), 3.0
    assert a.pipe.resolve_guidance(3.0) > 1  # the embedded pipeline runs a [empty; prompts] batch
    # the double block's image output, after every hook on it, is the next (single) block's image input
    full = []
    nxt = a.pipe.transformer.single_transformer_blocks[0]
    h = nxt.register_forward_pre_hook(lambda mod, args, kw: full.append(kw["hidden_states"].clone()), with_kwargs=True)
    try:
        base = run(a, [site], guidance=3.0, num_steps=2)
        base_full = full[:]
        full.clear()
        steered = run(a, [site], [Intervention(site, v, m, steps=[0], scale=s)], guidance=3.0, num_steps=2)
    finally:
        h.remove()
    B = len(PROMPTS)
    assert full[0].shape[0] == 2 * B
    assert_added(full[0] - base_full[0], m, s * v)  # both halves, unconditional and conditional
    torch.testing.assert_close(steered[(site, 0)], full[0][B:], rtol=0, atol=0)  # captures: conditional half
    torch.testing.assert_close(base[(site, 0)], base_full[0][B:], rtol=0, atol=0)


def test_intervention_at_step_1_leaves_step_0_alone():
    a = adapter("embedded-tiny")
    site = "double.0.img.out"
    info = a.site(site)
    v, m = vector(info.dim), mask_T(info.tokens)
    base = run(a, [site], num_steps=2)
    steered = run(a, [site], [Intervention(site, v, m, steps={1}, scale=2.0)], num_steps=2)
    assert torch.equal(steered[(site, 0)], base[(site, 0)])
    assert_added(steered[(site, 1)] - base[(site, 1)], m, 2.0 * v)  # step 1's input is unchanged too


def test_sdxl_update_intervention_moves_update_and_out_by_scale_times_vector():
    a = adapter("sdxl-tiny")
    out, upd = "unet.mid_block.attentions.0.out", "unet.mid_block.attentions.0.update"
    info = a.site(upd)
    v, m, s = vector(info.dim), mask_T(info.tokens), 2.0
    base = run(a, [out, upd], num_steps=2)
    steered = run(a, [out, upd], [Intervention(upd, v, m, steps=[1], scale=s)], num_steps=2)
    assert torch.equal(steered[(upd, 0)], base[(upd, 0)])
    assert_added(steered[(out, 1)] - base[(out, 1)], m, s * v)
    assert_added(steered[(upd, 1)] - base[(upd, 1)], m, s * v)


@pytest.mark.parametrize("make,message", [
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d + 1)), r"has width 33, the site has width 32"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(1, d)), r"must be 1-D \(D,\), got shape \(1, 32\)"),
    (lambda d, t: Intervention("double.0.img.out", np.ones(d)), r"must be a torch.Tensor"),
    (lambda d, t: Intervention("double.0.img.out", torch.full((d,), math.nan)), r"non-finite"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d), scale=math.inf), r"scale must be finite"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d), steps=[1, 2]), r"steps \[2\] lie outside .* \(0..1\)"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d), steps=[-1]), r"steps \[-1\] lie outside"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d), torch.ones(t - 1)), r"token mask has 63 tokens, the site has 64"),
    (lambda d, t: Intervention("double.0.img.out", torch.ones(d), torch.ones(1, t)), r"token mask must be a 1-D"),
    (lambda d, t: Intervention("double.0.txt.mlp", torch.ones(d)), r"double.0.txt.mlp: vector has width 32, the site has width 128"),
])
def test_bad_interventions_fail_before_the_model_runs(make, message):
    a = adapter("embedded-tiny")
    calls = []
    h = a.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message) as err:
            a.generate(PROMPTS, seeds=SEEDS, num_steps=2, interventions=[make(32, 64)])
    finally:
        h.remove()
    assert "intervention on double.0." in str(err.value)  # the error names the site
    assert not calls, "the model ran before the intervention was checked"


def test_mask_length_is_checked_at_the_runs_resolution():
    a = adapter("flux-tiny")  # grid = resolution / 2: 64 image tokens at 16 px, 256 at 32 px
    iv = Intervention("double.0.img.out", vector(32), torch.ones(64))
    a.generate(PROMPTS[:1], num_steps=1, resolution=16, interventions=[iv])
    with pytest.raises(ValueError, match="token mask has 64 tokens, the site has 256"):
        a.generate(PROMPTS[:1], num_steps=1, resolution=32, interventions=[iv])
    # text sites count text tokens, whatever the resolution
    txt = Intervention("double.0.txt.out", vector(32), torch.ones(a.text_len()))
    a.generate(PROMPTS[:1], num_steps=1, resolution=32, interventions=[txt])
