"""FLUX.1 (schnell, dev) through diffusers' FluxPipeline, and the base class of every
FluxTransformer2DModel-backed adapter (the embedded model subclasses it too)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from difflens.adapters import flux_hooks
from difflens.adapters.base import (HookPlan, ModelAdapter, SiteInfo, diffusers_classes, diffusers_modules,
                                    seeded_generators, to_uint8)

# prompts -> (prompt_embeds_BTD, pooled_prompt_embeds_BD); used when the pipeline has no text encoders.
PromptEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]

FLUX_MODELS = {
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
}


class FluxTransformerAdapter(ModelAdapter):
    """Sites and hooks of any model whose denoiser is a FluxTransformer2DModel (see flux_hooks)."""

    transformer: torch.nn.Module
    main_site_block: int = 0

    @abstractmethod
    def grid_for(self, resolution: int) -> tuple[int, int]:
        """(grid_h, grid_w) of the image tokens at `resolution` px (ValueError if unsupported)."""

    @abstractmethod
    def text_len(self) -> int:
        """Number of text tokens in the joint sequence."""

    def sites(self, resolution: int | None = None) -> list[SiteInfo]:
        res = self.default_resolution if resolution is None else int(resolution)
        return flux_hooks.list_sites(self.transformer, self.grid_for(res), self.text_len())

    def site(self, name: str, resolution: int | None = None) -> SiteInfo:
        flux_hooks.parse_site(name)  # malformed names get the naming scheme in the error
        return super().site(name, resolution)

    @property
    def default_sites(self) -> list[str]:
        n_double = len(self.transformer.transformer_blocks)
        return [f"double.{min(self.main_site_block, n_double - 1)}.img.out"]

    def _denoiser(self) -> torch.nn.Module:
        return self.transformer

    def _install(self, plan: HookPlan, sites: list[str], denoiser: torch.nn.Module) -> list:
        return flux_hooks.install(denoiser, plan, sites)


@dataclass
class FluxLoadConfig:
    """How to load FLUX.1 from the hub or a local folder."""

    model_id: str = FLUX_MODELS["flux-schnell"]
    dtype: str = "bfloat16"
    device: str | None = None  # default: cuda if available, else cpu
    cpu_offload: bool = False  # accelerate's model CPU offload (GPU only)
    quantization: str | None = None  # "nf4": 4-bit transformer via bitsandbytes (GPU only)


def _torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name]


def dtype_kwargs(dtype: torch.dtype) -> dict:
    """The from_pretrained keyword for a dtype: `dtype` where diffusers has deprecated `torch_dtype`
    (it warns on every load otherwise), `torch_dtype` on older releases that do not know `dtype`."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


@dataclass(frozen=True)
class FluxDefaults:
    """Sampling defaults of a FLUX.1 variant."""

    num_steps: int
    guidance: float
    max_sequence_length: int


# FLUX.1-dev is guidance-distilled (its transformer embeds the guidance scale); schnell is timestep-distilled
FLUX_DEV_DEFAULTS = FluxDefaults(num_steps=28, guidance=3.5, max_sequence_length=512)
FLUX_SCHNELL_DEFAULTS = FluxDefaults(num_steps=1, guidance=0.0, max_sequence_length=256)


def flux_defaults(transformer) -> FluxDefaults:
    """Defaults from the loaded transformer's config, not the model's path: `guidance_embeds` is what
    tells dev (True) from schnell (False)."""
    return FLUX_DEV_DEFAULTS if transformer.config.guidance_embeds else FLUX_SCHNELL_DEFAULTS


def _nf4_config(dtype: torch.dtype):
    if not torch.cuda.is_available():
        raise ValueError("NF4 quantization needs a CUDA GPU (bitsandbytes 4-bit kernels); load without --quantization on CPU")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("NF4 quantization needs bitsandbytes: pip install bitsandbytes")
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


class FluxAdapter(FluxTransformerAdapter):
    """FLUX.1 schnell/dev. Guidance is dev's distilled guidance (one transformer call per step, no CFG)."""

    default_store_dtype = "bfloat16"  # FLUX residual streams exceed float16's range

    def __init__(self, pipe, name: str = "flux", encode_prompts: PromptEncoder | None = None,
                 max_sequence_length: int = 256, num_steps: int = 1, guidance: float | None = 0.0,
                 resolution: int = 256, main_site_block: int = 18):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.name = name
        self.encode_prompts = encode_prompts
        self.max_sequence_length = max_sequence_length
        self.default_num_steps, self.default_guidance, self.default_resolution = num_steps, guidance, resolution
        self.main_site_block = main_site_block
        if pipe.text_encoder is None and encode_prompts is None:
            raise ValueError("FLUX pipeline has no text encoders: pass encode_prompts=prompts -> (embeds, pooled)")
        self._probe_text_len = None

    def weight_modules(self) -> dict[str, torch.nn.Module]:
        return diffusers_modules(self.pipe)

    @classmethod
    def from_pretrained(cls, cfg: FluxLoadConfig, name: str | None = None,
                        encode_prompts: PromptEncoder | None = None) -> "FluxAdapter":
        """Load FluxPipeline from `cfg.model_id` (hub id or local folder) with the requested options.
        `encode_prompts` is needed only for a folder saved without text encoders."""
        FluxPipeline, FluxTransformer2DModel = diffusers_classes("FluxPipeline", "FluxTransformer2DModel")

        dtype = _torch_dtype(cfg.dtype)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = dtype_kwargs(dtype)
        if encode_prompts is not None:  # own prompt embeddings: skip loading the text encoders
            kwargs.update(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
        if cfg.quantization:
            if cfg.quantization.lower() != "nf4":
                raise ValueError(f"unknown quantization {cfg.quantization!r}; supported: nf4")
            kwargs["transformer"] = FluxTransformer2DModel.from_pretrained(
                cfg.model_id, subfolder="transformer", quantization_config=_nf4_config(dtype), **dtype_kwargs(dtype))
        pipe = FluxPipeline.from_pretrained(cfg.model_id, **kwargs)
        if cfg.cpu_offload:
            if not torch.cuda.is_available():
                raise ValueError("--cpu-offload moves weights between CPU and GPU; it needs a CUDA GPU")
            pipe.enable_model_cpu_offload()
        elif not cfg.quantization:
            pipe.to(device)
        else:  # the quantized transformer is already placed; move the rest
            for part in ("text_encoder", "text_encoder_2", "vae"):
                if getattr(pipe, part, None) is not None:
                    getattr(pipe, part).to(device)
        pipe.transformer.eval()
        pipe.set_progress_bar_config(disable=True)
        d = flux_defaults(pipe.transformer)
        return cls(pipe, name=name or cfg.model_id, encode_prompts=encode_prompts,
                   max_sequence_length=d.max_sequence_length, num_steps=d.num_steps, guidance=d.guidance)

    # -- geometry ------------------------------------------------------------------------
    def grid_for(self, resolution: int) -> tuple[int, int]:
        factor = self.pipe.vae_scale_factor * 2
        if resolution % factor:
            raise ValueError(f"resolution {resolution} must be a multiple of {factor} for {self.name}")
        return resolution // factor, resolution // factor

    def text_len(self) -> int:
        if self.pipe.text_encoder is not None:
            return self.max_sequence_length
        if self._probe_text_len is None:
            self._probe_text_len = int(self.encode_prompts(["a"])[0].shape[1])
        return self._probe_text_len

    # -- generation ----------------------------------------------------------------------
    def _generate(self, prompts, seeds, num_steps, resolution, guidance, plan) -> np.ndarray:
        self.grid_for(resolution)
        if self.encode_prompts is not None:
            embeds, pooled = self.encode_prompts(prompts)
            text = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        else:
            text = {"prompt": prompts, "max_sequence_length": self.max_sequence_length}
        out = self.pipe(
            **text,
            height=resolution,
            width=resolution,
            num_inference_steps=num_steps,
            guidance_scale=0.0 if guidance is None else float(guidance),
            generator=seeded_generators(seeds),
            output_type="np",
        )
        return to_uint8(out.images)
