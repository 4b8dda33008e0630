"""Pick an adapter by name: `load_adapter("flux-schnell", LoadOptions(dtype="bfloat16"))`.

Names
  embedded                 the shipped embedded shapes-world model (the default)
  embedded-rich            the shipped embedded model of the rich shapes world (textures, parts, 1-3 objects)
  embedded-tiny            a tiny randomly initialised embedded model (tests, smoke runs)
  embedded:PATH            an embedded model folder (config.json + model.safetensors)
  flux-schnell, flux-dev   FLUX.1 from the Hugging Face hub;  flux:ID_OR_PATH for any other
  sdxl-turbo, sdxl         SDXL Turbo / SDXL base;            sdxl:ID_OR_PATH for any other
  flux-tiny, sdxl-tiny     tiny random FLUX / SDXL pipelines built from configs (no download)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from difflens.adapters.base import ModelAdapter

MODEL_NAMES = ["embedded", "embedded-rich", "embedded-tiny", "embedded:PATH", "flux-schnell", "flux-dev",
               "flux:ID_OR_PATH", "sdxl-turbo", "sdxl", "sdxl:ID_OR_PATH", "flux-tiny", "sdxl-tiny"]
DEFAULT_MODEL = "embedded"


@dataclass
class LoadOptions:
    """Loading options; None means the model's own default (FLUX bfloat16, SDXL float16, embedded float32)."""

    dtype: Literal["float32", "float16", "bfloat16"] | None = field(default=None,
                                                                    metadata={"aliases": ["--torch-dtype"]})
    """model weights dtype; None: the model's own (FLUX bfloat16, SDXL float16, embedded float32)"""
    device: str | None = None
    """cuda, cuda:1, cpu; None: cuda if available"""
    cpu_offload: bool = False
    """model CPU offload, weights moved to the GPU as needed (FLUX and SDXL; needs a GPU)"""
    quantization: Literal["nf4"] | None = None
    """nf4: 4-bit NF4 FLUX transformer (FLUX only; GPU + bitsandbytes)"""


def load_adapter(spec: str | None = None, options: LoadOptions | None = None) -> "ModelAdapter":
    spec = spec or DEFAULT_MODEL
    opt = options or LoadOptions()
    if opt.quantization and not (spec.startswith("flux")):
        raise ValueError(f"--quantization applies to FLUX models only, not {spec!r}")
    kind, _, target = spec.partition(":")

    if kind in ("embedded", "embedded-rich", "embedded-tiny"):
        return _embedded(spec, kind, target, opt)
    if kind in ("flux", "flux-schnell", "flux-dev", "flux-tiny"):
        from difflens.adapters.flux import FLUX_MODELS, FluxAdapter, FluxLoadConfig

        if kind == "flux-tiny":
            from difflens.adapters.tiny import tiny_flux_pipeline

            pipe, enc = tiny_flux_pipeline()
            return FluxAdapter(pipe, name="flux-tiny", encode_prompts=enc, num_steps=2, resolution=16, main_site_block=1)
        model_id = target if kind == "flux" else FLUX_MODELS[kind]
        if not model_id:
            raise ValueError("flux: needs a hub id or local path, e.g. flux:/models/FLUX.1-schnell")
        cfg = FluxLoadConfig(model_id=model_id, device=opt.device, cpu_offload=opt.cpu_offload,
                             quantization=opt.quantization, **({"dtype": opt.dtype} if opt.dtype else {}))
        return FluxAdapter.from_pretrained(cfg, name=spec)
    if kind in ("sdxl", "sdxl-turbo", "sdxl-tiny"):
        from difflens.adapters.sdxl import SDXL_MODELS, SDXLAdapter, SDXLLoadConfig

        if kind == "sdxl-tiny":
            from difflens.adapters.tiny import tiny_sdxl_pipeline

            pipe, enc = tiny_sdxl_pipeline()
            return SDXLAdapter(pipe, name="sdxl-tiny", encode_prompts=enc, num_steps=1, resolution=32)
        model_id = target if (kind == "sdxl" and target) else SDXL_MODELS[kind]
        cfg = SDXLLoadConfig(model_id=model_id, device=opt.device, cpu_offload=opt.cpu_offload,
                             **({"dtype": opt.dtype} if opt.dtype else {}))
        return SDXLAdapter.from_pretrained(cfg, name=spec)
    raise ValueError(f"unknown model {spec!r}; known: {', '.join(MODEL_NAMES)}")


def _embedded(spec: str, kind: str, target: str, opt: LoadOptions) -> "ModelAdapter":
    import torch

    from difflens.adapters.embedded import EmbeddedAdapter
    from difflens.embedded import ShapesModelConfig, ShapesPipeline, load_embedded

    if opt.cpu_offload:
        raise ValueError("--cpu-offload is for FLUX/SDXL; the embedded model is small enough to load whole")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(opt.dtype or "float32")
    if dtype is None:
        raise ValueError(f"unknown dtype {opt.dtype!r}")
    device = opt.device or "cpu"
    if kind == "embedded-tiny":
        pipe = ShapesPipeline.random(ShapesModelConfig.tiny(), seed=0)
        if device != "cpu" or dtype != torch.float32:
            pipe = pipe.to(device, dtype)
    elif target:
        pipe = ShapesPipeline.from_pretrained(target, device=device, dtype=dtype)
    else:
        try:
            pipe = load_embedded(device=device, dtype=dtype, world="rich" if kind == "embedded-rich" else "classic")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}: the trained embedded model is not shipped in this checkout yet "
                                    f"(train it with `difflens world train`, or use --model embedded-tiny)") from None
    pipe.transformer.eval()
    return EmbeddedAdapter(pipe, name=spec)
