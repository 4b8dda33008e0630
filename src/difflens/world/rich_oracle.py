"""The rich-world oracle: read background colour and texture, and each object's colour, pattern, shape (composites
included), size, position and part masks, from pixels alone.

Why not one distance threshold: a textured background has two tones (and a gradient every blend between them),
and a pattern gives an object two colours. The palette is known, so each pixel is judged by geometry in RGB:

* background: the colour whose line from base colour to second tone lies nearest the border pixels;
* foreground: pixels farther from that line than ``MIN_FOREGROUND_DISTANCE`` and nearer to some object colour
  or shade than to the line (so a blurred rim splits half way, as a person would split it);
* object colour: the majority of its pixels' nearest object colour or shade; pattern: the tone map
  (`patterns.pattern_tone`) that best matches each pixel's position on the colour-to-shade line;
* texture: likewise, the texture tone map that best matches the background pixels' position on their line;
* shape: the best template fit (`oracle.shape_fits`) over simple and composite shapes; parts: `parts.split_parts`;
* size: the bounding box's longer side; position: the 3x3 cell of the bounding box's centre.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .oracle import ObjectReading, SceneReading, foreground_blobs, shape_fits
from .palette import BACKGROUND_TONES, PATTERNS, RICH_SHAPES, SHADES, TEXTURES
from .parts import split_parts
from .patterns import pattern_tone, texture_tone
from .scene import COLORS, POSITIONS

MIN_FOREGROUND_DISTANCE = 30.0  # RGB distance from the background's line below which a pixel is never foreground
SIZE_EDGES = (0.23, 0.335)  # bbox longer side, as a share of the image side: small | large | huge
SIZE_NAMES = ("small", "large", "huge")

_BG_NAMES = list(BACKGROUND_TONES)
_BG_BASE = np.array([BACKGROUND_TONES[n][0] for n in _BG_NAMES], np.float32)
_BG_SECOND = np.array([BACKGROUND_TONES[n][1] for n in _BG_NAMES], np.float32)
_OBJ_NAMES = list(COLORS)
_OBJ_RGB = np.array([COLORS[n] for n in _OBJ_NAMES], np.float32)
_OBJ_SHADE = np.array([SHADES[n] for n in _OBJ_NAMES], np.float32)
_OBJ_PALETTE = np.concatenate([_OBJ_RGB, _OBJ_SHADE])  # (2K, 3): colours, then their shades


def _on_segment(rgb_N3: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance (N,), position t in [0, 1] (N,)) of RGB points to the segment from a to b."""
    d = b - a
    t = np.clip(((rgb_N3 - a) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.linalg.norm(rgb_N3 - a - t[:, None] * d, axis=-1), t


def _best_tone(values_N: np.ndarray, where_HW: np.ndarray, names, tone_of, size: int) -> str:
    """The name whose tone map best matches `values_N` (tones read at the True pixels of `where_HW`)."""
    errors = [float(np.abs(values_N - tone_of(n, size)[where_HW]).mean()) for n in names]
    return names[int(np.argmin(errors))]


def read_rich_image(image: np.ndarray) -> SceneReading:
    """Read an RGB uint8 image (H, W, 3) of the rich world. Objects are sorted by grid cell; each has `pattern` and
    `parts`, the reading has `texture`."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"oracle expects an RGB image of shape (H, W, 3), got {image.shape}")
    img = image.astype(np.float32)
    size = img.shape[0]
    flat = img.reshape(-1, 3)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = int(np.argmin([np.median(_on_segment(border, a, b)[0]) for a, b in zip(_BG_BASE, _BG_SECOND)]))
    bg_dist, bg_t = (v.reshape(size, size) for v in _on_segment(flat, _BG_BASE[bg], _BG_SECOND[bg]))
    palette_dist = np.linalg.norm(flat[:, None] - _OBJ_PALETTE[None], axis=-1)  # (HW, 2K)
    nearest = palette_dist.argmin(-1).reshape(size, size) % len(_OBJ_NAMES)
    foreground = (bg_dist > MIN_FOREGROUND_DISTANCE) & (bg_dist > palette_dist.min(-1).reshape(size, size))
    objects = []
    foreground, blobs = foreground_blobs(foreground)  # specks dropped, as the classic oracle does
    for mask in blobs:
        area = int(mask.sum())
        rows, cols = np.nonzero(mask)
        color = int(np.bincount(nearest[mask], minlength=len(_OBJ_NAMES)).argmax())
        core = ndimage.binary_erosion(mask)  # rims blend with the background under blur: judge patterns inside
        core = core if core.sum() >= 16 else mask
        _, shade_t = _on_segment(img[core], _OBJ_RGB[color], _OBJ_SHADE[color])
        fits = shape_fits(mask, RICH_SHAPES)
        shape = max(fits, key=fits.get)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        cy, cx = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
        cell = (min(int(cy * 3 / size), 2), min(int(cx * 3 / size), 2))
        objects.append(ObjectReading(
            color=_OBJ_NAMES[color],
            shape=shape,
            size=SIZE_NAMES[int(np.searchsorted(np.array(SIZE_EDGES) * size, extent, side="left"))],
            position=POSITIONS[cell[0] * 3 + cell[1]],
            area=area,
            centroid=(float(rows.mean() + 0.5), float(cols.mean() + 0.5)),
            mask=mask,
            pattern=_best_tone(shade_t, core, PATTERNS, pattern_tone, size),
            parts=split_parts(shape, mask),
        ))
    objects.sort(key=lambda o: POSITIONS.index(o.position))
    background_px = ~ndimage.binary_dilation(foreground, iterations=2)
    if background_px.sum() < 32:
        background_px = ~foreground
    texture = _best_tone(bg_t[background_px], background_px, TEXTURES, texture_tone, size)
    return SceneReading(background=_BG_NAMES[bg], objects=objects, texture=texture)
