"""Adapters: site shapes, capture exactness, update = out - in, both FLUX block conventions, interventions."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from tiny_models import adapter

from difflens.adapters import Capture, Intervention, LoadOptions, load_adapter
from difflens.adapters import flux_hooks
from difflens.adapters.base import HookPlan

PROMPTS = ["a small red circle on the left on a white background", "a large blue square at the top on a black background"]


def capture_all(a, sites=None, steps=None, **kw):
    got = {}
    names = sites or [s.name for s in a.sites(kw.get("resolution"))]
    images = a.generate(PROMPTS, seeds=[3, 4], capture=Capture(names, lambda n, st, x: got.__setitem__((n, st), x.clone()), steps), **kw)
    return images, got


@pytest.mark.parametrize("name", ["flux-tiny", "embedded-tiny", "sdxl-tiny"])
def test_site_shapes_match_captured_tensors_and_images_unchanged(name):
    a = adapter(name)
    plain = a.generate(PROMPTS, seeds=[3, 4])
    images, got = capture_all(a)
    assert np.array_equal(plain, images), "capturing changed the images"
    n_steps = a.default_num_steps
    for s in a.sites():
        for step in range(n_steps):
            assert got[(s.name, step)].shape == (2, s.tokens, s.dim), (s, step)
    # image i depends only on seeds[i]: generating it alone gives the same pixels
    alone = a.generate(PROMPTS[1:], seeds=[4])
    assert np.array_equal(alone[0], plain[1])


def test_flux_site_inventory():
    a = adapter("flux-tiny")
    names = [s.name for s in a.sites()]
    assert len(names) == (2 + 2) * 2 * 3
    s = a.site("double.1.img.out")
    assert (s.stream, s.tokens, s.dim, s.grid) == ("image", 64, 32, (8, 8))
    assert a.site("single.0.txt.mlp").dim == 128 and a.site("single.0.txt.mlp").tokens == 8
    assert a.site("double.0.img.out", resolution=32).grid == (16, 16)
    assert [tuple(x) for x in a.token_to_rowcol([0, 9, 63])] == [(0, 1, 7), (0, 1, 7)]


def test_embedded_sites():
    a = adapter("embedded-tiny")
    cfg = a.pipe.config
    s = a.site("double.0.img.out")
    assert s.grid == (cfg.grid_size, cfg.grid_size) and s.tokens == cfg.grid_size**2 and s.dim == cfg.width
    assert a.site("single.0.txt.update").tokens == cfg.max_text_len
    with pytest.raises(ValueError, match="generates 32 px images only"):
        a.generate(PROMPTS, resolution=64)


def test_embedded_guidance_captures_the_conditional_half():
    a = adapter("embedded-tiny")
    plain = a.generate(PROMPTS, seeds=[3, 4], guidance=3.0, num_steps=2)
    images, got = capture_all(a, sites=["double.0.img.out"], guidance=3.0, num_steps=2)
    assert np.array_equal(plain, images)
    batches = []
    block = a.pipe.transformer.transformer_blocks[0]
    h = block.register_forward_hook(lambda m, args, kwargs, out: batches.append(out[1]), with_kwargs=True)
    a.generate(PROMPTS, seeds=[3, 4], guidance=3.0, num_steps=2)
    h.remove()
    assert batches[0].shape[0] == 4  # [empty prompts; prompts]
    torch.testing.assert_close(got[("double.0.img.out", 1)], batches[1][2:], rtol=0, atol=0)


def test_sdxl_sites_follow_the_unet_and_cfg_halves():
    a = adapter("sdxl-tiny")
    assert a.default_sites == ["unet.mid_block.attentions.0.update", "unet.up_blocks.0.attentions.0.update",
                               "unet.up_blocks.0.attentions.1.update"]  # the paper's sites that exist in the tiny UNet
    assert a.site("unet.down_blocks.0.attentions.0.update").grid == (16, 16)
    assert a.site("unet.mid_block.attentions.0.out", resolution=64).grid == (16, 16)
    # with CFG the capture sees the conditional half only (B = 2 prompts), images still unchanged
    plain = a.generate(PROMPTS, seeds=[3, 4], guidance=3.0, num_steps=2)
    images, got = capture_all(a, sites=["unet.mid_block.attentions.0.update"], guidance=3.0, num_steps=2)
    assert np.array_equal(plain, images)
    assert got[("unet.mid_block.attentions.0.update", 1)].shape == (2, 64, 64)
    # conditional half == what a guidance-free pass of the same latents would not give; check against a manual hook
    halves = []
    blk = a._blocks["mid_block.attentions.0"]
    h = blk.register_forward_hook(lambda m, args, out: halves.append((out[0] - args[0]).flatten(2).transpose(1, 2)))
    a.generate(PROMPTS, seeds=[3, 4], guidance=3.0, num_steps=2)
    h.remove()
    assert halves[0].shape[0] == 4
    torch.testing.assert_close(got[("unet.mid_block.attentions.0.update", 0)], halves[0][2:], rtol=0, atol=0)


def test_update_is_output_minus_input():
    a = adapter("flux-tiny")
    _, got = capture_all(a, steps=[0])
    for stream in ("img", "txt"):
        # block 1's input is block 0's output; the first single block's input is the last double block's output
        torch.testing.assert_close(got[(f"double.1.{stream}.out", 0)] - got[(f"double.1.{stream}.update", 0)],
                                   got[(f"double.0.{stream}.out", 0)])
        torch.testing.assert_close(got[(f"single.0.{stream}.out", 0)] - got[(f"single.0.{stream}.update", 0)],
                                   got[(f"double.1.{stream}.out", 0)])


class _OldSingleBlock(torch.nn.Module):
    """A diffusers 0.31-0.34 style single block: one concatenated stream (text first) in and out."""

    def __init__(self, block, text_len):
        super().__init__()
        self.block, self.text_len = block, text_len
        self.act_mlp = block.act_mlp

    def forward(self, hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        L = self.text_len
        txt, img = self.block(hidden_states=hidden_states[:, L:], encoder_hidden_states=hidden_states[:, :L],
                              temb=temb, image_rotary_emb=image_rotary_emb)
        return torch.cat([txt, img], dim=1)


def test_old_single_block_convention_gives_the_same_sites():
    a = adapter("flux-tiny")
    block = a.transformer.single_transformer_blocks[0]
    L, N, D = 8, 64, 32
    g = torch.Generator().manual_seed(0)
    txt, img, temb = torch.randn(2, L, D, generator=g), torch.randn(2, N, D, generator=g), torch.randn(2, D, generator=g)
    sites = ["single.0.img.out", "single.0.txt.update", "single.0.img.mlp"]

    def run(module, call):
        got = {}
        fake = type("T", (), {"transformer_blocks": [], "single_transformer_blocks": [module]})()
        plan = HookPlan(captures=[Capture(sites, lambda n, st, x: got.__setitem__(n, x.clone()))], text_len=L)
        handles = flux_hooks.install(fake, plan, sites)
        with torch.no_grad():
            call(module)
        for h in handles:
            h.remove()
        return got

    new = run(block, lambda m: m(hidden_states=img, encoder_hidden_states=txt, temb=temb))
    old = run(_OldSingleBlock(block, L), lambda m: m(hidden_states=torch.cat([txt, img], 1), temb=temb))
    for s in sites:
        torch.testing.assert_close(old[s], new[s], rtol=0, atol=0)
    assert new["single.0.img.out"].shape == (2, N, D) and new["single.0.txt.update"].shape == (2, L, D)


def test_intervention_adds_vector_on_mask_at_steps():
    a = adapter("flux-tiny")
    site = "double.1.img.out"
    vec = torch.randn(32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(64)
    mask[:10] = 1
    base_img, base = capture_all(a, sites=[site])
    iv = Intervention(site, vec, token_mask_T=mask, steps=[0], scale=2.0)
    images = a.generate(PROMPTS, seeds=[3, 4], interventions=[iv])
    _, steered = capture_all(a, sites=[site], interventions=[Intervention(site, vec, mask, [0], 2.0)])
    diff = steered[(site, 0)] - base[(site, 0)]
    torch.testing.assert_close(diff[:, :10], (2 * vec).expand(2, 10, 32), atol=1e-5, rtol=1e-5)
    assert diff[:, 10:].abs().max() == 0
    assert not np.array_equal(images, base_img)
    # nothing selected -> nothing changes
    none = a.generate(PROMPTS, seeds=[3, 4], interventions=[Intervention(site, vec, torch.zeros(64))])
    assert np.array_equal(none, base_img)
    with pytest.raises(ValueError, match="intervention on double.1.img.out: token mask has 5 tokens, the site has 64"):
        a.generate(PROMPTS, interventions=[Intervention(site, vec, torch.ones(5))])


def test_sdxl_and_mlp_interventions_change_images():
    s = adapter("sdxl-tiny")
    base = s.generate(PROMPTS, seeds=[3, 4])
    iv = Intervention("unet.mid_block.attentions.0.out", torch.randn(64, generator=torch.Generator().manual_seed(0)) * 5)
    assert not np.array_equal(s.generate(PROMPTS, seeds=[3, 4], interventions=[iv]), base)
    f = adapter("flux-tiny")
    base = f.generate(PROMPTS, seeds=[3, 4])
    iv = Intervention("double.0.img.mlp", torch.randn(128, generator=torch.Generator().manual_seed(0)) * 5)
    assert not np.array_equal(f.generate(PROMPTS, seeds=[3, 4], interventions=[iv]), base)


def test_bad_input_errors():
    f = adapter("flux-tiny")
    with pytest.raises(ValueError, match="bad FLUX site name 'double.1.image.out'"):
        f.site("double.1.image.out")
    with pytest.raises(ValueError, match="unknown site 'double.7.img.out'"):
        f.generate(PROMPTS, capture=Capture(["double.7.img.out"], lambda *a: None))
    with pytest.raises(ValueError, match="multiple of 2"):
        f.generate(PROMPTS, resolution=15)
    with pytest.raises(ValueError, match="bad SDXL site name"):
        adapter("sdxl-tiny").site("down_blocks.2.attentions.1")
    with pytest.raises(ValueError, match="unknown model 'flux-pro'"):
        load_adapter("flux-pro")
    with pytest.raises(ValueError, match="FLUX models only"):
        load_adapter("sdxl-turbo", LoadOptions(quantization="nf4"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="NF4 quantization needs a CUDA GPU"):
            load_adapter("flux:/nonexistent/flux", LoadOptions(quantization="nf4"))
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        f.generate(PROMPTS[:1], seeds=[1, 2])


def test_from_pretrained_loads_a_saved_pipeline_folder(tmp_path):
    """The real loading path (FluxPipeline/StableDiffusionXLPipeline.from_pretrained) on local folders."""
    from difflens.adapters.flux import FluxAdapter, FluxLoadConfig
    from difflens.adapters.sdxl import SDXLAdapter, SDXLLoadConfig

    for name, cls, cfg_cls in (("flux-tiny", FluxAdapter, FluxLoadConfig), ("sdxl-tiny", SDXLAdapter, SDXLLoadConfig)):
        tiny = adapter(name)
        tiny.pipe.save_pretrained(tmp_path / name, safe_serialization=True)
        loaded = cls.from_pretrained(cfg_cls(model_id=str(tmp_path / name), dtype="float32", device="cpu"),
                                     encode_prompts=tiny.encode_prompts)
        assert [s.name for s in loaded.sites(tiny.default_resolution)] == [s.name for s in tiny.sites()]
        want = tiny.generate(PROMPTS, seeds=[3, 4])
        got = loaded.generate(PROMPTS, seeds=[3, 4], resolution=tiny.default_resolution, num_steps=tiny.default_num_steps,
                              guidance=0.0)
        assert np.array_equal(got, want), name


@contextmanager
def diffusers_warnings():
    """Collect what diffusers warns about: its logger (which does not propagate to the root logger,
    so caplog misses it) and Python warnings raised from diffusers code."""
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield got
        got += [str(w.message) for w in caught if "diffusers" in w.filename]
    finally:
        logger.removeHandler(handler)


def _flux_folder(tmp_path, folder: str, guidance_embeds: bool):
    from difflens.adapters.flux import FluxAdapter, FluxLoadConfig
    from difflens.adapters.tiny import tiny_flux_pipeline

    pipe, enc = tiny_flux_pipeline(guidance_embeds=guidance_embeds, num_layers=1, num_single_layers=1)
    path = tmp_path / folder
    pipe.save_pretrained(path, safe_serialization=True)
    with diffusers_warnings() as warned:
        loaded = FluxAdapter.from_pretrained(FluxLoadConfig(model_id=str(path), dtype="float32", device="cpu"),
                                             encode_prompts=enc)
    assert not warned, warned  # e.g. diffusers' torch_dtype deprecation
    return loaded


def test_flux_defaults_come_from_the_transformer_config_not_the_path(tmp_path):
    # a schnell-like transformer (no guidance embedding) under a path that says "dev" twice
    schnell = _flux_folder(tmp_path, "dev/shm/FLUX.1-dev-copy", guidance_embeds=False)
    assert (schnell.default_num_steps, schnell.default_guidance, schnell.max_sequence_length) == (1, 0.0, 256)
    # and the converse: a guidance-distilled (dev-like) transformer under a "schnell" path
    dev = _flux_folder(tmp_path, "FLUX.1-schnell", guidance_embeds=True)
    assert (dev.default_num_steps, dev.default_guidance, dev.max_sequence_length) == (28, 3.5, 512)


def test_sdxl_defaults_come_from_the_scheduler_config_not_the_path(tmp_path):
    from diffusers import EulerDiscreteScheduler

    from difflens.adapters.sdxl import SDXLAdapter, SDXLLoadConfig

    tiny = adapter("sdxl-tiny")
    loaded = {}
    for folder, spacing in (("sdxl-turbo", "leading"), ("sdxl-base", "trailing")):
        tiny.pipe.scheduler = EulerDiscreteScheduler.from_config(tiny.pipe.scheduler.config, timestep_spacing=spacing)
        tiny.pipe.save_pretrained(tmp_path / folder, safe_serialization=True)
        loaded[folder] = SDXLAdapter.from_pretrained(SDXLLoadConfig(model_id=str(tmp_path / folder), dtype="float32",
                                                                    device="cpu"), encode_prompts=tiny.encode_prompts)
    tiny.pipe.scheduler = EulerDiscreteScheduler.from_config(tiny.pipe.scheduler.config, timestep_spacing="trailing")
    base, turbo = loaded["sdxl-turbo"], loaded["sdxl-base"]
    # "leading" spacing: a many-step model at the pipeline's own size (UNet sample_size 16 x VAE factor 2)
    assert (base.default_num_steps, base.default_guidance, base.default_resolution) == (30, 5.0, 32)
    assert (turbo.default_num_steps, turbo.default_guidance, turbo.default_resolution) == (1, 0.0, 512)


@pytest.mark.parametrize("spec,dtype", [("embedded-tiny", None), ("embedded-tiny", "float16"), ("embedded", None)])
def test_loading_the_embedded_model_emits_no_diffusers_warning(spec, dtype):
    from difflens.embedded.pipeline import WEIGHTS_DIR

    if spec == "embedded" and not (WEIGHTS_DIR / "model.safetensors").is_file():
        pytest.skip("the trained embedded model is not in this checkout")
    with diffusers_warnings() as warned:
        a = load_adapter(spec, LoadOptions(dtype=dtype))
    assert a.pipe.dtype == getattr(torch, dtype or "float32")
    assert not warned, warned


def test_real_model_adapters_print_no_transformers_torchvision_warnings():
    """Loading flux-tiny and sdxl-tiny in a fresh process: only difflens' own output, no transformers warnings
    about torchvision-backed image processors that difflens never uses."""
    import subprocess
    import sys

    from tiny_models import subprocess_env

    code = "import difflens as dl; dl.load_model('flux-tiny'); dl.load_model('sdxl-tiny')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torchvision" not in out.stderr + out.stdout and "[transformers]" not in out.stderr
