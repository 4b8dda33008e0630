"""Tiny randomly initialised FLUX and SDXL pipelines built from configs (no hub access).

For tests, CI and smoke runs of the real adapters' code paths: the architectures match
FLUX.1 / SDXL, only much smaller; text encoders are replaced by a seeded prompt hash.
"""

from __future__ import annotations

import hashlib

import torch

from difflens.adapters.base import diffusers_classes


class HashPromptEncoder:
    """Deterministic stand-in text encoder: prompt -> seeded random (embeds_TD, pooled_P)."""

    def __init__(self, text_len: int, dim: int, pooled_dim: int, dtype: torch.dtype = torch.float32):
        self.text_len, self.dim, self.pooled_dim, self.dtype = text_len, dim, pooled_dim, dtype

    def _one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.text_len, self.dim, generator=g), torch.randn(self.pooled_dim, generator=g)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._one(p) for p in prompts]
        return (torch.stack([p[0] for p in pairs]).to(self.dtype), torch.stack([p[1] for p in pairs]).to(self.dtype))


def tiny_flux_pipeline(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2, guidance_embeds: bool = False):
    """FluxPipeline with a 2+2-block transformer (width 32), a 1-level VAE (grid = resolution / 2)
    and no text encoders. guidance_embeds=True makes it dev-like (guidance-distilled), else schnell-like.
    Returns (pipe, HashPromptEncoder)."""
    AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel = diffusers_classes(
        "AutoencoderKL", "FlowMatchEulerDiscreteScheduler", "FluxPipeline", "FluxTransformer2DModel")

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8), guidance_embeds=guidance_embeds,
    ).eval()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe, HashPromptEncoder(text_len=8, dim=32, pooled_dim=32)


def tiny_sdxl_pipeline(seed: int = 0):
    """StableDiffusionXLPipeline with a 2-level UNet (cross-attention dim 64) and no text encoders.
    Returns (pipe, HashPromptEncoder). Latent grid = resolution / 2; attention blocks at 1/2 and 1/4 of it."""
    AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel = diffusers_classes(
        "AutoencoderKL", "EulerDiscreteScheduler", "StableDiffusionXLPipeline", "UNet2DConditionModel")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    ).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, HashPromptEncoder(text_len=8, dim=64, pooled_dim=32)
