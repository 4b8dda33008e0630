"""Configuration of the embedded shapes-world model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREDICTIONS = ("x", "velocity")


def check_guidance_scale(scale: float) -> float:
    """A classifier-free guidance scale: finite and >= 0 (<= 1 turns guidance off, as in diffusers)."""
    if not 0 <= scale < float("inf"):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {scale}")
    return scale


@dataclass
class ShapesModelConfig:
    """FLUX-style model of 64 px images on a 16x16 grid of image tokens: latents of a small autoencoder
    (x4 downsampling, like FLUX's VAE + 2x2 patches) or, with latent_channels = 0, 4x4 RGB pixel patches."""

    image_size: int = 64
    patch_size: int = 4
    num_double_blocks: int = 2
    """double-stream (joint text-image attention, separate weights per stream) blocks, as FLUX's first blocks"""
    num_single_blocks: int = 2
    """single-stream blocks (one set of weights over the concatenated text and image tokens)"""
    num_heads: int = 4
    """attention heads; the transformer's width is num_heads x head_dim"""
    head_dim: int = 24
    """width of one head; must equal the sum of axes_dims_rope"""
    axes_dims_rope: tuple[int, int, int] = (8, 8, 8)
    """rotary embedding dimensions per axis; must sum to head_dim"""
    text_layers: int = 2
    """layers of the word-level text encoder trained jointly with the transformer"""
    text_heads: int = 4
    text_width: int = 0
    """width of the text encoder's states; 0: the transformer's width. As FLUX.1's T5 (4096) feeds a 3072-wide
    transformer, the transformer's `context_embedder` maps one onto the other, so a pretrained encoder can serve
    a wider transformer"""
    max_text_len: int = 24
    prediction: str = "x"
    """what the transformer outputs. "x": the clean image x_0, and the velocity is derived from it (JiT, Li &
    He 2025); flat-colour pixel patches are far easier to predict than noise, so edges (= shapes) come out
    clean. "velocity": noise - x_0 directly, as FLUX does."""
    guidance_scale: float = 1.0
    """default classifier-free guidance scale of `generate`; <= 1 turns guidance off (as in diffusers), > 1
    needs a model trained with caption dropout. A sampling setting: not compared when training resumes."""
    latent_channels: int = 8
    """autoencoder latent channels. 0: pixel space, the transformer works on pixel patches; > 0: on the latents
    of a small autoencoder (`autoencoder.py`, x4 downsampling, so patch_size must be 4) with this many
    channels, as FLUX does."""
    world: str = "classic"
    """shapes world the model draws (`difflens.world`): "classic" or "rich"; its captions train the model and its
    vocabulary fills `vocab`"""
    vocab: list[str] = field(default_factory=list)
    """words of the text encoder; filled from the world's vocabulary when empty"""

    def __post_init__(self):
        self.axes_dims_rope = tuple(self.axes_dims_rope)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if sum(self.axes_dims_rope) != self.head_dim:
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must sum to head_dim {self.head_dim}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.latent_channels < 0 or (self.latent_channels and self.patch_size != 4):
            raise ValueError(f"latent_channels must be 0 (pixels) or > 0 with patch_size 4, got "
                             f"{self.latent_channels} with patch_size {self.patch_size}")
        if self.text_width < 0 or self.text_encoder_width % self.text_heads:
            raise ValueError(f"text_width must be 0 (the transformer's width) or a positive multiple of text_heads "
                             f"{self.text_heads}, and the text encoder's width {self.text_encoder_width} must be one")
        check_guidance_scale(self.guidance_scale)
        from ..world import WORLDS, vocabulary

        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        if not self.vocab:
            self.vocab = vocabulary(self.world)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def width(self) -> int:
        """Residual-stream width of the transformer (num_heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def text_encoder_width(self) -> int:
        """Width of the text encoder's states (`text_width`, or the transformer's width when it is 0)."""
        return self.text_width or self.width

    @property
    def patch_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def token_channels(self) -> int:
        """Channels of one image token the transformer denoises: a pixel patch or a latent vector."""
        return self.latent_channels or self.patch_channels

    @classmethod
    def tiny(cls) -> "ShapesModelConfig":
        """A very small model for tests: 32 px, 8x8 tokens, width 32."""
        return cls(image_size=32, patch_size=4, num_double_blocks=1, num_single_blocks=1, num_heads=2, head_dim=16,
                   axes_dims_rope=(4, 6, 6), text_layers=1, text_heads=2, latent_channels=0)

    def architecture(self) -> dict:
        """The fields that fix the weights' shapes and meaning (all but sampling defaults)."""
        arch = {k: v for k, v in json.loads(json.dumps(asdict(self))).items() if k != "guidance_scale"}
        arch["text_width"] = self.text_encoder_width  # 0 and the transformer's own width are the same model
        return arch

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: str | Path) -> "ShapesModelConfig":
        """The config a weights folder keeps (`config.json`); a corrupt file is a CorruptFileError naming it."""
        from difflens.reading import read_json

        return cls(**read_json(path, "embedded model config", expect=dict,
                               hint="reinstall difflens, or retrain with `difflens world train`"))
