"""Generation-like damage to clean renders (ragged edges, soft corners), to measure how robust the oracle is.

A model's generations are never pixel-exact: edges come out ragged and corners soft. The oracle judges
generations, so it must read such images as a person would; these perturbations put a number on that.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .render import paint_background, paint_object
from .scene import Scene


def roughen_edges(scene: Scene, image_HWC: np.ndarray, masks: list[np.ndarray], fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Flip `fraction` of the pixels on each object's one-pixel rim, inside and out, between object and background
    (the background's texture and the object's pattern at those pixels, in the rich world)."""
    out = image_HWC.copy()
    size = image_HWC.shape[0]
    background = paint_background(scene, size)
    for obj, mask in zip(scene.objects, masks):
        rim = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        flip = rim & (rng.random(mask.shape) < fraction)
        out[flip & mask] = background[flip & mask]
        out[flip & ~mask] = paint_object(obj, size)[flip & ~mask]
    return out


def soften(image_HWC: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (sigma in pixels): rounded corners and blended rims."""
    blurred = ndimage.gaussian_filter(image_HWC.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
