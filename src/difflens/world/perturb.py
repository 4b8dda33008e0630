"""Generation-like damage to clean renders (ragged edges, soft corners), to measure how robust the oracle is.

A model's generations are never pixel-exact: edges come out ragged and corners soft. The oracle judges
generations, so it must read such images as a person would; these perturbations put a number on that.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .scene import BACKGROUNDS, COLORS, Scene


def roughen_edges(scene: Scene, image_HWC: np.ndarray, masks: list[np.ndarray], fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Flip `fraction` of the pixels on each object's one-pixel rim, inside and out, between object and background."""
    out = image_HWC.copy()
    background = np.array(BACKGROUNDS[scene.background], dtype=np.uint8)
    for obj, mask in zip(scene.objects, masks):
        rim = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        flip = rim & (rng.random(mask.shape) < fraction)
        out[flip & mask] = background
        out[flip & ~mask] = COLORS[obj.color]
    return out


def soften(image_HWC: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (sigma in pixels): rounded corners and blended rims."""
    blurred = ndimage.gaussian_filter(image_HWC.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
