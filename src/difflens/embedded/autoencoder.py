"""A tiny convolutional autoencoder: 64 px RGB images <-> a 16x16 grid of latent tokens.

FLUX.1 denoises VAE latents, not pixels. Here too the transformer can work on latents: the decoder,
trained on clean renders with noise added to their latents, turns an approximately right latent into
crisp flat-colour shapes, so the transformer no longer has to place every edge pixel itself.
Latents are tanh-bounded to [-1, 1], the same range as pixels, so the rectified flow is unchanged.

Shapes: images_BCHW in [-1, 1] (C = 3); latents_BCgg with g = image_size / 4.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ShapesAutoencoder(nn.Module):
    """Encoder: two stride-2 convs (x4 downsampling) to `latent_channels`; decoder: the mirror image."""

    def __init__(self, latent_channels: int, width: int = 64):
        super().__init__()
        w1, w2 = width // 4, width // 2
        self.encoder = nn.Sequential(
            _conv(3, w1), nn.SiLU(),
            _conv(w1, w2, stride=2), nn.SiLU(),
            _conv(w2, width, stride=2), nn.SiLU(),
            _conv(width, width), nn.SiLU(),
            nn.Conv2d(width, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            _conv(latent_channels, width), nn.SiLU(),
            _conv(width, width), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(width, w2), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(w2, w1), nn.SiLU(),
            _conv(w1, 3),
        )

    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Latents in [-1, 1], (B, latent_channels, H/4, W/4)."""
        return torch.tanh(self.encoder(images_BCHW))

    def decode(self, latents_BCgg: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 4g, 4g), roughly in [-1, 1] (callers clamp)."""
        return self.decoder(latents_BCgg)
