"""The embedded text-to-image model: text encoder + diffusers' FluxTransformer2DModel (+ autoencoder in latent space).

Like FLUX.1 it is a rectified flow: x_t = (1 - t) x_0 + t noise, the model predicts the velocity
noise - x_0 (by default derived from the transformer's estimate of x_0, see `ShapesModelConfig.prediction`),
and a sampler integrates from t = 1 to 0 with Euler steps. The transformer
is called with FluxPipeline's keyword arguments, so hooks on its blocks see FLUX's tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import FluxTransformer2DModel
from ..atomic import atomic_save_tensors, atomic_write_bytes
from ..reading import read_safetensors
from .autoencoder import ShapesAutoencoder
from .config import ShapesModelConfig, check_guidance_scale
from .text_encoder import TextEncoder, WordTokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_WEIGHTS = {"classic": WEIGHTS_DIR, "rich": Path(__file__).parent / "weights_rich"}
"""the package's shipped model of each shapes world (`embedded` and `embedded-rich`)"""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_STEPS = 8
MIN_T_FOR_X_PREDICTION = 0.05  # v = (x_t - x_0) / t is divided by at least this


def build_transformer(cfg: ShapesModelConfig) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.token_channels,
        out_channels=cfg.token_channels,
        num_layers=cfg.num_double_blocks,
        num_single_layers=cfg.num_single_blocks,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.text_encoder_width,
        pooled_projection_dim=cfg.text_encoder_width,
        guidance_embeds=False,
        axes_dims_rope=cfg.axes_dims_rope,
    )


def patchify(images_BCHW: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> tokens (B, (H/p)*(W/p), 3*p*p), row-major over the patch grid."""
    b, c, h, w = images_BCHW.shape
    x = images_BCHW.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens_BND: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, grid*grid, 3*p*p) -> (B, 3, grid*p, grid*p)."""
    b = tokens_BND.shape[0]
    x = tokens_BND.reshape(b, grid, grid, 3, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, grid * patch, grid * patch)


def sigma_schedule(num_steps: int) -> torch.Tensor:
    """Noise levels t_0 = 1 > ... > t_N = 0 for an N-step Euler sampler (uniform in t)."""
    if not 1 <= num_steps <= 1000:
        raise ValueError(f"num_steps must be between 1 and 1000, got {num_steps}")
    return torch.linspace(1.0, 0.0, num_steps + 1)


class ShapesPipeline:
    """Holds the model parts; `generate` turns prompts into images. Call `.to(device)` to move it."""

    def __init__(self, config: ShapesModelConfig, transformer: FluxTransformer2DModel, text_encoder: TextEncoder,
                 autoencoder: ShapesAutoencoder | None = None):
        if bool(config.latent_channels) != (autoencoder is not None):
            raise ValueError("a latent-space config needs an autoencoder, a pixel-space one none")
        self.config = config
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder.eval()
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.tokenizer = WordTokenizer(config.vocab, config.max_text_len)
        g = config.grid_size
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        # FLUX's position ids: (0, row, col) for image tokens, zeros for text tokens.
        self.img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        self.txt_ids = torch.zeros(config.max_text_len, 3)

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def build_modules(config: ShapesModelConfig) -> tuple:
        """(transformer, text_encoder, autoencoder or None), randomly initialised."""
        text_encoder = TextEncoder(len(config.vocab) + 1, config.max_text_len, config.text_encoder_width,
                                   config.text_layers, config.text_heads)
        autoencoder = ShapesAutoencoder(config.latent_channels) if config.latent_channels else None
        return build_transformer(config), text_encoder, autoencoder

    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {"transformer": self.transformer, "text_encoder": self.text_encoder}
        if self.autoencoder is not None:
            parts["autoencoder"] = self.autoencoder
        return parts

    @classmethod
    def random(cls, config: ShapesModelConfig | None = None, seed: int = 0) -> "ShapesPipeline":
        """A randomly initialised model (tests, and the start of training)."""
        torch.manual_seed(seed)
        config = config or ShapesModelConfig()
        return cls(config, *cls.build_modules(config))

    @classmethod
    def from_pretrained(cls, path: str | Path = WEIGHTS_DIR, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ShapesPipeline":
        """Load `config.json` + `model.safetensors` from a folder (default: the weights shipped in the package)."""
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"embedded model file missing: {path / name}")
        config = ShapesModelConfig.read(path / CONFIG_FILE)
        pipe = cls(config, *cls.build_modules(config))
        weights, _ = read_safetensors(path / WEIGHTS_FILE, "embedded model weights",
                                      hint="reinstall difflens, or retrain with `difflens world train`")
        pipe.load_state_dict(weights)
        return pipe.to(device, dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, module in self.modules().items() for k, v in module.state_dict().items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        modules = self.modules()
        parts = {name: {} for name in modules}
        for key, value in sd.items():
            prefix, _, rest = key.partition(".")
            if prefix not in parts:
                raise ValueError(f"unexpected tensor {key!r} in embedded model weights")
            parts[prefix][rest] = value
        for name, module in modules.items():
            module.load_state_dict(parts[name])

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write config.json + model.safetensors (weights cast to `dtype` to keep the package small)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path / WEIGHTS_FILE, {k: v.to(dtype) for k, v in self.state_dict().items()})
        atomic_write_bytes(path / CONFIG_FILE, self.config.to_json().encode())

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "ShapesPipeline":
        if dtype == self.dtype:
            dtype = None
        for module in self.modules().values():
            if dtype is None:
                module.to(device)  # no dtype keyword: diffusers' ModelMixin.to warns whenever one is passed, even None
            else:  # nothing here is kept in fp32 or quantized, so ModelMixin.to's extra checks do not apply
                torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ---- model calls -----------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds_BTD, pooled_BD) for a list of prompts."""
        return self.encode_ids(self.tokenizer(list(prompts)))

    def encode_ids(self, ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds_BTD, pooled_BD) for token ids (all zeros: the empty prompt)."""
        states, pooled = self.text_encoder(ids_BT.to(self.device))
        return states.to(self.dtype), pooled.to(self.dtype)

    def velocity(self, x_BND: torch.Tensor, t_B: torch.Tensor, prompt_embeds_BTD: torch.Tensor,
                 pooled_BD: torch.Tensor) -> torch.Tensor:
        """Predicted velocity (noise - x_0) for noisy image tokens at noise levels t in [0, 1]."""
        out = self.transformer(
            hidden_states=x_BND,
            encoder_hidden_states=prompt_embeds_BTD,
            pooled_projections=pooled_BD,
            timestep=t_B.to(x_BND.dtype),  # FluxTransformer2DModel multiplies by 1000 itself
            img_ids=self.img_ids.to(x_BND.device),
            txt_ids=self.txt_ids.to(x_BND.device),
            return_dict=False,
        )[0]
        if self.config.prediction == "velocity":
            return out
        t_B11 = t_B.to(x_BND.dtype).clamp(min=MIN_T_FOR_X_PREDICTION)[:, None, None]
        return (x_BND - out) / t_B11

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """x_1 (B, N, token_channels): image i's noise depends only on seeds[i]."""
        cfg = self.config
        shape = (cfg.grid_size**2, cfg.token_channels)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    def resolve_guidance(self, guidance_scale: float | None) -> float:
        """The scale `generate` uses: the model's default when None; > 1 runs a [empty; prompts] batch."""
        return check_guidance_scale(self.config.guidance_scale if guidance_scale is None else float(guidance_scale))

    def use_guidance(self, guidance_scale: float | None) -> "ShapesPipeline":
        """Make `guidance_scale` the default of `generate` (None: keep the saved one); returns the pipeline."""
        self.config.guidance_scale = self.resolve_guidance(guidance_scale)
        return self

    @torch.no_grad()
    def generate(self, prompts: list[str] | str, num_steps: int = DEFAULT_STEPS,
                 seeds: list[int] | int = 0, guidance_scale: float | None = None) -> np.ndarray:
        """Images uint8 (B, H, W, 3). `seeds` is one seed per prompt, or a base seed (image i gets seed + i).

        guidance_scale: classifier-free guidance, v = v_empty + scale (v_prompt - v_empty); None: the model's
        default (`config.guidance_scale`); <= 1: none. The transformer is called exactly once per step (hooks
        count steps that way); with guidance its batch is [empty prompts; prompts], 2B rows.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(seeds, int):
            seeds = [seeds + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        scale = self.resolve_guidance(guidance_scale)
        guided = scale > 1
        sigmas = sigma_schedule(num_steps)
        embeds, pooled = self.encode_prompt(prompts)
        if guided:
            empty_embeds, empty_pooled = self.encode_ids(self.tokenizer.unconditional(len(prompts)))
            embeds, pooled = torch.cat([empty_embeds, embeds]), torch.cat([empty_pooled, pooled])
        x = self.initial_noise(seeds)
        for i in range(num_steps):
            x_in = torch.cat([x, x]) if guided else x
            t = torch.full((x_in.shape[0],), float(sigmas[i]), device=self.device)
            v = self.velocity(x_in, t, embeds, pooled)
            if guided:
                v_empty, v_prompt = v.chunk(2)
                v = v_empty + scale * (v_prompt - v_empty)
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return self.tokens_to_uint8(x)

    # ---- images <-> the tokens the transformer denoises ---------------------------------------
    def images_to_tokens(self, images_BHWC: np.ndarray) -> torch.Tensor:
        """uint8 images (B, H, W, 3) -> clean tokens x_0 (B, grid*grid, token_channels), row-major."""
        images = uint8_to_pixels(images_BHWC)
        if self.autoencoder is None:
            return patchify(images, self.config.patch_size)
        with torch.no_grad():
            latents = self.autoencoder.encode(images.to(self.device, self.dtype))
        return latents.flatten(2).transpose(1, 2)

    def tokens_to_uint8(self, x_BND: torch.Tensor) -> np.ndarray:
        """Denoised tokens -> uint8 images (B, H, W, 3) (through the decoder in latent space)."""
        g = self.config.grid_size
        if self.autoencoder is None:
            return pixels_to_uint8(unpatchify(x_BND.float().cpu(), self.config.patch_size, g))
        with torch.no_grad():
            return pixels_to_uint8(self.autoencoder.decode(x_BND.transpose(1, 2).reshape(x_BND.shape[0], -1, g, g)))


def uint8_to_pixels(images_BHWC: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_BHWC)).permute(0, 3, 1, 2).float() / 127.5 - 1


def pixels_to_uint8(images_BCHW: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W), nominally in [-1, 1] (clamped) -> uint8 images (B, H, W, 3)."""
    images = ((images_BCHW.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def load_embedded(device: str = "cpu", dtype: torch.dtype = torch.float32, world: str = "classic") -> ShapesPipeline:
    """The trained embedded model of `world` ("classic" or "rich") shipped inside the package."""
    if world not in SHIPPED_WEIGHTS:
        raise ValueError(f"no shipped embedded model of world {world!r}; shipped: {', '.join(SHIPPED_WEIGHTS)}")
    return ShapesPipeline.from_pretrained(SHIPPED_WEIGHTS[world], device=device, dtype=dtype)
