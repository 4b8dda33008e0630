"""The oracle: read a shapes-world image from pixels alone.

It recovers the background colour and, for each object, colour, shape, size and grid position.
It judges generations, edits and features, so it only looks at pixels, never at a caption.
Robust to mild generation noise: colours are snapped to the palette, specks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .scene import BACKGROUNDS, COLORS, POSITIONS

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_OBJ_NAMES = list(COLORS)
_OBJ_RGB = np.array([COLORS[n] for n in _OBJ_NAMES], dtype=np.float32)

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is foreground
MIN_AREA_FRACTION = 12 / 4096  # components smaller than this share of the image are specks
LARGE_EXTENT_FRACTION = 0.23  # bbox side (as a share of the image side) separating small from large


@dataclass
class ObjectReading:
    color: str
    shape: str
    size: str
    position: str
    area: int
    centroid: tuple[float, float]  # (y, x) in pixels
    mask: np.ndarray = field(repr=False)


@dataclass
class SceneReading:
    background: str
    objects: list[ObjectReading]


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> int:
    return int(np.argmin(((palette - rgb) ** 2).sum(-1)))


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one connected blob from its bounding-box occupancy.

    Square fills its box; a circle leaves the box corners partly empty; a diamond leaves all
    four corners empty; an apex-up triangle leaves the top corners empty, fills the bottom ones.
    """
    rows, cols = np.nonzero(mask)
    box = mask[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1].astype(np.float32)
    h, w = box.shape
    fill = box.mean()
    ch, cw = max(1, round(h * 0.25)), max(1, round(w * 0.25))
    top = (box[:ch, :cw].mean() + box[:ch, -cw:].mean()) / 2
    bottom = (box[-ch:, :cw].mean() + box[-ch:, -cw:].mean()) / 2
    if fill > 0.9 or min(top, bottom) > 0.75:
        return "square"
    if bottom - top > 0.25:
        return "triangle"
    if fill > 0.62 or min(top, bottom) > 0.2:
        return "circle"
    return "diamond"


def read_image(image: np.ndarray) -> SceneReading:
    """Read an RGB uint8 image (H, W, 3) of the shapes world. Objects are sorted by grid cell."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"oracle expects an RGB image of shape (H, W, 3), got {image.shape}")
    img = image.astype(np.float32)
    size = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_index = _nearest(np.median(border, axis=0), _BG_RGB)
    foreground = np.sqrt(((img - _BG_RGB[bg_index]) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    # Opening by reconstruction: drop foreground blobs too thin to hold a 3x3 square (generation
    # specks), keep every pixel of the blobs that can, so object outlines are untouched.
    seeds = ndimage.binary_opening(foreground, structure=np.ones((3, 3)))
    foreground = ndimage.binary_propagation(seeds, mask=foreground)
    labels, n = ndimage.label(foreground, structure=np.ones((3, 3)))
    objects = []
    for i in range(1, n + 1):
        mask = labels == i
        area = int(mask.sum())
        if area < MIN_AREA_FRACTION * mask.size:
            continue
        rows, cols = np.nonzero(mask)
        cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        cell = (min(int(cy * 3 / size), 2), min(int(cx * 3 / size), 2))
        objects.append(ObjectReading(
            color=_OBJ_NAMES[_nearest(np.median(img[mask], axis=0), _OBJ_RGB)],
            shape=classify_shape(mask),
            size="large" if extent > LARGE_EXTENT_FRACTION * size else "small",
            position=POSITIONS[cell[0] * 3 + cell[1]],
            area=area,
            centroid=(float(cy), float(cx)),
            mask=mask,
        ))
    objects.sort(key=lambda o: POSITIONS.index(o.position))
    return SceneReading(background=_BG_NAMES[bg_index], objects=objects)
