"""A latent's token activations drawn over the image: painted in blue (the FLUX paper's feature visualisation), or
as a spotlight that keeps the true colours where the latent fires and fades the rest to grey.

Token (row, col) of a grid_h × grid_w map covers the pixel block rows [row·H/grid_h, (row+1)·H/grid_h) and
columns [col·W/grid_w, (col+1)·W/grid_w); the map is upsampled by repeating each token over its block.
Opacity is α = √(a / a_max) (clipped to [0, 1]), so weak activations stay visible, with a_max the latent's
maximum over the index (the same scale on every image of a card). Blue paint hides what the latent fires on
(a green object under it looks blue); the spotlight shows it, so a colour latent can be named at a glance.
"""

from __future__ import annotations

import numpy as np
import torch

BLUE = np.array([30.0, 90.0, 255.0])
FADE_GREY = np.array([200.0, 200.0, 200.0])


def upsample_map(map_HW: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    """Token map (grid_h, grid_w) -> pixel map (height, width) by blocks; the image must be a whole number of blocks."""
    grid = np.asarray(map_HW.detach().cpu() if isinstance(map_HW, torch.Tensor) else map_HW, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"an activation map must be (grid_h, grid_w), got shape {grid.shape}")
    gh, gw = grid.shape
    if height % gh or width % gw:
        raise ValueError(f"a {height}x{width} image is not a whole number of {gh}x{gw} token blocks")
    return np.repeat(np.repeat(grid, height // gh, axis=0), width // gw, axis=1)


def _image_and_level(image_HWC: np.ndarray, map_HW, max_activation: float) -> tuple[np.ndarray, np.ndarray]:
    """(float image (H, W, 3), per-pixel level √(clip(a / max_activation, 0, 1)) as (H, W, 1))."""
    image = np.asarray(image_HWC, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    pixels = upsample_map(map_HW, image.shape[0], image.shape[1])
    scale = float(max_activation) if max_activation and max_activation > 0 else 1.0
    return image, np.sqrt(np.clip(pixels / scale, 0.0, 1.0))[..., None]


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).round().astype(np.uint8)


def paint(image_HWC: np.ndarray, map_HW, max_activation: float, strength: float = 0.85) -> np.ndarray:
    """uint8 image with the map painted in blue: α = strength · √(clip(a / max_activation, 0, 1))."""
    image, level = _image_and_level(image_HWC, map_HW, max_activation)
    return _blend(image, strength * level, BLUE)


def spotlight(image_HWC: np.ndarray, map_HW, max_activation: float, strength: float = 0.9) -> np.ndarray:
    """uint8 image faded to grey where the latent is silent: fade = strength · (1 - √(clip(a / max, 0, 1)))."""
    image, level = _image_and_level(image_HWC, map_HW, max_activation)
    return _blend(image, strength * (1 - level), FADE_GREY)


# style -> (drawing function, what a figure's legend says it shows)
DRAWINGS = {"blue": (paint, "blue: activation"),
            "spotlight": (spotlight, "true colours where active, grey where silent")}
STYLES = tuple(DRAWINGS)


def check_style(style: str) -> str:
    """`style` when it is one of `STYLES`, else a ValueError naming them."""
    if style not in DRAWINGS:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def draw_activation(image_HWC: np.ndarray, map_HW, max_activation: float, style: str = "blue") -> np.ndarray:
    """The map drawn over the image in one of `STYLES`: "blue" (`paint`) or "spotlight" (`spotlight`)."""
    return DRAWINGS[check_style(style)][0](image_HWC, map_HW, max_activation)


def enlarge(image_HWC: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so a 64 px image reads well on a card."""
    return np.repeat(np.repeat(np.asarray(image_HWC), factor, axis=0), factor, axis=1)
