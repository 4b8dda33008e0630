"""SDXL and SDXL Turbo through diffusers' StableDiffusionXLPipeline.

Sites are the UNet's Transformer2DModel blocks (the SDXL-Turbo paper's four are the defaults):
``unet.<module path>.update`` = output - input, and ``unet.<module path>.out`` = output,
as acts_BTD with T = H*W feature-map positions (row-major) and D channels. Under
classifier-free guidance the batch is [uncond, cond]; captures see the conditional half,
interventions act on both halves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from difflens.adapters.base import (HookPlan, ModelAdapter, SiteInfo, diffusers_classes, diffusers_modules,
                                    seeded_generators, to_uint8)
from difflens.adapters.flux import PromptEncoder, _torch_dtype, dtype_kwargs

SDXL_MODELS = {
    "sdxl-turbo": "stabilityai/sdxl-turbo",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
PAPER_SITES = [
    "unet.down_blocks.2.attentions.1.update",
    "unet.mid_block.attentions.0.update",
    "unet.up_blocks.0.attentions.0.update",
    "unet.up_blocks.0.attentions.1.update",
]
_SITE_RE = re.compile(r"^unet\.(.+)\.(update|out)$")


@dataclass
class SDXLLoadConfig:
    """How to load SDXL / SDXL Turbo from the hub or a local folder."""

    model_id: str = SDXL_MODELS["sdxl-turbo"]
    dtype: str = "float16"
    device: str | None = None
    cpu_offload: bool = False


def sdxl_defaults(pipe) -> tuple[int, float, int]:
    """(num_steps, guidance, resolution) from the loaded pipeline, not the model's path. SDXL Turbo has
    SDXL's architecture; what its folder carries differently is a scheduler with "trailing" timestep
    spacing, which one-step sampling needs (with "leading" spacing one step starts from t = 1, nearly
    clean). Few-step models: 1 step, no guidance, 512 px (Turbo's training size). Others: 30 steps,
    guidance 5, and the pipeline's own default size (UNet sample_size x VAE factor: 1024 for SDXL)."""
    if pipe.scheduler.config.get("timestep_spacing") == "trailing":
        return 1, 0.0, 512
    return 30, 5.0, int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def transformer_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's Transformer2DModel blocks by module path (the sites' blocks)."""
    return {n: m for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"}


def _bchw_to_btd(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class SDXLAdapter(ModelAdapter):
    default_store_dtype = "float16"

    def __init__(self, pipe, name: str = "sdxl", encode_prompts: PromptEncoder | None = None,
                 num_steps: int = 1, guidance: float | None = 0.0, resolution: int = 512):
        self.pipe = pipe
        self.unet = pipe.unet
        self.name = name
        self.encode_prompts = encode_prompts
        self.default_num_steps, self.default_guidance, self.default_resolution = num_steps, guidance, resolution
        if pipe.text_encoder_2 is None and encode_prompts is None:
            raise ValueError("SDXL pipeline has no text encoders: pass encode_prompts=prompts -> (embeds, pooled)")
        self._blocks = transformer_blocks(self.unet)

    def weight_modules(self) -> dict[str, torch.nn.Module]:
        return diffusers_modules(self.pipe)

    @classmethod
    def from_pretrained(cls, cfg: SDXLLoadConfig, name: str | None = None,
                        encode_prompts: PromptEncoder | None = None) -> "SDXLAdapter":
        """Load StableDiffusionXLPipeline from a hub id or local folder (`encode_prompts`: see FluxAdapter)."""
        (StableDiffusionXLPipeline,) = diffusers_classes("StableDiffusionXLPipeline")

        dtype = _torch_dtype(cfg.dtype)
        kwargs = dtype_kwargs(dtype)
        if encode_prompts is not None:  # own prompt embeddings: skip loading the text encoders
            kwargs.update(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
        pipe = StableDiffusionXLPipeline.from_pretrained(cfg.model_id, **kwargs)
        if cfg.cpu_offload:
            if not torch.cuda.is_available():
                raise ValueError("--cpu-offload moves weights between CPU and GPU; it needs a CUDA GPU")
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe.set_progress_bar_config(disable=True)
        steps, guidance, resolution = sdxl_defaults(pipe)
        return cls(pipe, name=name or cfg.model_id, encode_prompts=encode_prompts, num_steps=steps,
                   guidance=guidance, resolution=resolution)

    # -- sites -----------------------------------------------------------------------------
    def _spatial(self, path: str, resolution: int) -> int:
        """Feature-map side of a block: the latent halves after every down block but the last."""
        factor = self.pipe.vae_scale_factor
        if resolution % (factor * 2 ** (len(self.unet.down_blocks) - 1)):
            raise ValueError(f"resolution {resolution} is not a multiple of {factor * 2 ** (len(self.unet.down_blocks) - 1)}")
        latent, depth = resolution // factor, len(self.unet.down_blocks) - 1
        parts = path.split(".")
        if parts[0] == "mid_block":
            level = depth
        else:
            level = int(parts[1]) if parts[0] == "down_blocks" else depth - int(parts[1])
        return latent // 2**level

    def sites(self, resolution: int | None = None) -> list[SiteInfo]:
        res = self.default_resolution if resolution is None else int(resolution)
        out = []
        for path, block in self._blocks.items():
            side = self._spatial(path, res)
            for what in ("update", "out"):
                out.append(SiteInfo(f"unet.{path}.{what}", "image", what, side * side, block.config.in_channels, (side, side)))
        return out

    def site(self, name: str, resolution: int | None = None) -> SiteInfo:
        if not _SITE_RE.match(name):
            raise ValueError(f"bad SDXL site name {name!r}: expected unet.<Transformer2DModel path>.(update|out), "
                             f"e.g. {PAPER_SITES[0]}")
        return super().site(name, resolution)

    @property
    def default_sites(self) -> list[str]:
        have = {s.name for s in self.sites()}
        paper = [s for s in PAPER_SITES if s in have]
        return paper or [f"unet.{next(iter(self._blocks))}.update"]

    # -- hooks -----------------------------------------------------------------------------
    def _denoiser(self) -> torch.nn.Module:
        return self.unet

    def _install(self, plan: HookPlan, sites: list[str], denoiser: torch.nn.Module) -> list:
        per_block: dict[str, list[str]] = {}
        for n in sites:
            path = _SITE_RE.match(n).group(1)
            per_block.setdefault(path, []).append(n)
        blocks = self._blocks if denoiser is self.unet else transformer_blocks(denoiser)
        return [blocks[p].register_forward_hook(self._hook(plan, names), with_kwargs=True)
                for p, names in per_block.items()]

    def _hook(self, plan: HookPlan, names: list[str]):
        def hook(_module, args, kwargs, output):
            if not any(plan.capturing(n) or plan.intervening(n) for n in names):
                return None
            inp = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output.sample
            shape = out.shape
            out_btd = _bchw_to_btd(out)
            changed = False
            for n in names:
                if plan.intervening(n):
                    out_btd = plan.intervene(n, out_btd, _bchw_to_btd(inp) if n.endswith(".update") else None)
                    changed = True
            for n in names:
                if plan.capturing(n):
                    val = out_btd if n.endswith(".out") else out_btd - _bchw_to_btd(inp)
                    plan.capture(n, val)
            if not changed:
                return None
            new = out_btd.transpose(1, 2).reshape(shape)
            return (new, *output[1:]) if isinstance(output, tuple) else type(output)(sample=new)

        return hook

    # -- generation ------------------------------------------------------------------------
    def _generate(self, prompts, seeds, num_steps, resolution, guidance, plan) -> np.ndarray:
        self._spatial("mid_block", resolution)
        g = 0.0 if guidance is None else float(guidance)
        plan.cfg_batch = g > 1.0 and self.unet.config.time_cond_proj_dim is None  # the pipeline's own rule
        if self.encode_prompts is not None:
            embeds, pooled = self.encode_prompts(prompts)
            text = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        else:
            text = {"prompt": prompts}
        out = self.pipe(**text, height=resolution, width=resolution, num_inference_steps=num_steps,
                        guidance_scale=g, generator=seeded_generators(seeds), output_type="np")
        return to_uint8(out.images)
