"""Rasterise a scene: an RGB image and one boolean pixel mask per object (no anti-aliasing, exact masks)."""

from __future__ import annotations

import numpy as np

from .scene import BACKGROUNDS, COLORS, Scene

SIZE_FRACTION = {"small": 0.16, "large": 0.28}  # object extent as a fraction of the image side


SQUARE_HALF_SIDE = 0.85  # a square's half side, in half-extents (so it looks as big as the circle)
# area of each shape in units of its half-extent squared (the shapes `shape_inside` draws)
SHAPE_AREA = {"circle": np.pi, "square": (2 * SQUARE_HALF_SIDE) ** 2, "triangle": 2.0, "diamond": 2.0}
# vertical offset of a shape's centroid from its centre, in half-extents (the triangle's mass sits low)
SHAPE_CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3, "diamond": 0.0}


def shape_inside(shape: str, dy: np.ndarray, dx: np.ndarray, radius) -> np.ndarray:
    """Whether points at offsets (dy, dx) from a shape's centre lie inside it (half-extent `radius`; broadcasts)."""
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        half = SQUARE_HALF_SIDE * radius
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    if shape == "triangle":  # apex up, base at the bottom
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= radius
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, cy: float, cx: float, radius: float, image_size: int) -> np.ndarray:
    """Boolean (H, W) mask of a shape centred at (cy, cx) with half-extent `radius`, tested at pixel centres."""
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    return shape_inside(shape, y - cy, x - cx, radius)


def object_geometry(cell: tuple[int, int], offset: tuple[float, float], size: str, image_size: int):
    """Centre (cy, cx) and half-extent of an object in its grid cell."""
    cell_px = image_size / 3
    cy = (cell[0] + 0.5) * cell_px + offset[0] * image_size / 64
    cx = (cell[1] + 0.5) * cell_px + offset[1] * image_size / 64
    return cy, cx, SIZE_FRACTION[size] * image_size / 2


def render(scene: Scene, image_size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """(image uint8 (H, W, 3), [mask bool (H, W) per object])."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    masks = []
    for obj in scene.objects:
        cy, cx, radius = object_geometry(obj.cell, obj.offset, obj.size, image_size)
        mask = shape_mask(obj.shape, cy, cx, radius, image_size)
        image[mask] = COLORS[obj.color]
        masks.append(mask)
    return image, masks
