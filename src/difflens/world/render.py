"""Rasterise a scene: an RGB image and one boolean pixel mask per object (no anti-aliasing, exact masks).

Rich scenes (textures, patterns, composite shapes, "huge") go through the same code; a classic scene's pixels
are exactly what they always were (plain background, solid objects).
"""

from __future__ import annotations

import numpy as np

from .palette import BACKGROUND_TONES, SHADES
from .parts import split_parts
from .patterns import blend, pattern_tone, texture_tone
from .scene import COLORS, Scene

SIZE_FRACTION = {"small": 0.16, "large": 0.28, "huge": 0.44}  # object extent as a fraction of the image side


SQUARE_HALF_SIDE = 0.85  # a square's half side, in half-extents (so it looks as big as the circle)
# area of each shape in units of its half-extent squared (the shapes `shape_inside` draws)
SHAPE_AREA = {"circle": np.pi, "square": (2 * SQUARE_HALF_SIDE) ** 2, "triangle": 2.0, "diamond": 2.0}
# vertical offset of a shape's centroid from its centre, in half-extents (the triangle's mass sits low)
SHAPE_CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3, "diamond": 0.0}

# composite shapes, in half-extents of their (square) bounding box, y down; each a union of two stacked parts
HOUSE_EAVES, HOUSE_BODY_HALF = -0.1, 0.72  # roof from the apex (-1) down to the eaves; body below, narrower
TREE_CROWN_BASE, TREE_CROWN_HALF, TREE_TRUNK_HALF = 0.45, 0.8, 0.25
SNOWMAN_HEAD, SNOWMAN_BODY = (-0.5, 0.5), (0.38, 0.62)  # (centre y, radius) of each circle


def _composite_inside(shape: str, dy, dx, radius):
    r = radius
    if shape == "house":
        roof = (dy >= -r) & (dy <= HOUSE_EAVES * r) & (np.abs(dx) <= (dy + r) / (1 + HOUSE_EAVES))
        body = (dy >= HOUSE_EAVES * r) & (dy <= r) & (np.abs(dx) <= HOUSE_BODY_HALF * r)
        return roof | body
    if shape == "tree":
        crown = (dy >= -r) & (dy <= TREE_CROWN_BASE * r) & (
            np.abs(dx) <= TREE_CROWN_HALF * (dy + r) / (1 + TREE_CROWN_BASE))
        trunk = (dy >= TREE_CROWN_BASE * r) & (dy <= r) & (np.abs(dx) <= TREE_TRUNK_HALF * r)
        return crown | trunk
    if shape == "snowman":
        (hy, hr), (by, br) = SNOWMAN_HEAD, SNOWMAN_BODY
        return ((dy - hy * r) ** 2 + dx**2 <= (hr * r) ** 2) | ((dy - by * r) ** 2 + dx**2 <= (br * r) ** 2)
    return None


def _measure_composites(n: int = 801) -> None:
    """Area and centroid offset (in half-extents) of each composite, measured on a fine grid, for the oracle's fits."""
    y, x = (np.mgrid[0:n, 0:n] + 0.5) * (2.2 / n) - 1.1
    cell = (2.2 / n) ** 2
    for shape in ("house", "tree", "snowman"):
        inside = _composite_inside(shape, y, x, 1.0)
        SHAPE_AREA[shape] = float(inside.sum() * cell)
        SHAPE_CENTROID_OFFSET[shape] = float(y[inside].mean())


_measure_composites()


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
    composite = _composite_inside(shape, dy, dx, radius)
    if composite is not None:
        return composite
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


def object_mask(obj, image_size: int) -> np.ndarray:
    """bool (H, W) mask of one object (`ObjectSpec`) as the renderer draws it."""
    cy, cx, radius = object_geometry(obj.cell, obj.offset, obj.size, image_size)
    return shape_mask(obj.shape, cy, cx, radius, image_size)


def paint_background(scene: Scene, image_size: int = 64) -> np.ndarray:
    """uint8 (H, W, 3): the scene's background alone (its colour, and its texture if any)."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    base, second = BACKGROUND_TONES[scene.background]
    if scene.texture == "plain":
        image[:] = base
    else:
        image[:] = blend(base, second, texture_tone(scene.texture, image_size))
    return image


def paint_object(obj, image_size: int = 64) -> np.ndarray:
    """uint8 (H, W, 3): the object's colour (and pattern) over the whole image, to be cut by its mask."""
    if obj.pattern == "solid":
        return np.broadcast_to(np.array(COLORS[obj.color], np.uint8), (image_size, image_size, 3))
    return blend(COLORS[obj.color], SHADES[obj.color], pattern_tone(obj.pattern, image_size))


def render(scene: Scene, image_size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """(image uint8 (H, W, 3), [mask bool (H, W) per object]); later objects paint over earlier ones."""
    image = paint_background(scene, image_size)
    masks = []
    for obj in scene.objects:
        mask = object_mask(obj, image_size)
        image[mask] = paint_object(obj, image_size)[mask]
        masks.append(mask)
    return image, masks


def render_parts(scene: Scene, image_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Per object, {part name: bool (H, W) mask} of its named parts (composite shapes; {} for simple ones)."""
    return [split_parts(obj.shape, object_mask(obj, image_size)) for obj in scene.objects]
