"""The oracle: read a shapes-world image from pixels alone.

It recovers the background colour and, for each object, colour, shape, size and grid position.
It judges generations, edits and features, so it only looks at pixels, never at a caption.
Robust to mild generation noise: colours are snapped to the palette, specks are dropped.
`read_image(image, world="rich")` reads with that world's oracle (`worlds.World.read`; the rich one,
`rich_oracle.py`, reads textures, patterns and parts too); the default reads the classic world exactly as it
always has (`read_classic_image`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .render import SHAPE_AREA, SHAPE_CENTROID_OFFSET, shape_inside
from .scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES

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
    pattern: str = "solid"  # rich world only; the classic oracle reads every object as solid
    parts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # part name -> bool (H, W) (composites)


@dataclass
class SceneReading:
    background: str
    objects: list[ObjectReading]
    texture: str = "plain"  # rich world only

    def as_dict(self, rich: bool = False, geometry: bool = False) -> dict:
        """JSON form (masks left out): background and each object's attributes; `rich` adds the background texture
        and each object's pattern, `geometry` each object's area and centroid."""
        objects = []
        for o in self.objects:
            obj = {"color": o.color, "shape": o.shape, "size": o.size, "position": o.position}
            if geometry:
                obj.update(area=o.area, centroid=[round(v, 2) for v in o.centroid])
            if rich:
                obj["pattern"] = o.pattern
            objects.append(obj)
        return {"background": self.background, **({"texture": self.texture} if rich else {}), "objects": objects}


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> int:
    return int(np.argmin(((palette - rgb) ** 2).sum(-1)))


# template fits tried per shape: radius scales around the area-matched radius, centre shifts in pixels
_FIT_SCALES = np.array([0.9, 0.95, 1.0, 1.05, 1.1], dtype=np.float32)
_FIT_SHIFTS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)


def shape_fits(mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> dict[str, float]:
    """Best intersection-over-union of one blob with each ideal shape of `shapes`, fitted to its area and centroid.

    Matching whole templates, not a few corner pixels, is what makes the reading robust to the ragged edges
    and softened corners of generations (`difflens world oracle-robustness` measures it).
    """
    rows, cols = np.nonzero(mask)
    area = len(rows)
    cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
    pad = int(0.3 * max(np.ptp(rows), np.ptp(cols))) + 3
    y0, x0 = max(0, rows.min() - pad), max(0, cols.min() - pad)
    window_HW = mask[y0: rows.max() + pad + 1, x0: cols.max() + pad + 1]
    y_HW, x_HW = np.mgrid[0: window_HW.shape[0], 0: window_HW.shape[1]].astype(np.float32) + 0.5
    y_HW, x_HW = y_HW + y0, x_HW + x0
    fits = {}
    for shape in shapes:
        radius_R = np.sqrt(area / SHAPE_AREA[shape]) * _FIT_SCALES
        centre_y_RS = cy - SHAPE_CENTROID_OFFSET[shape] * radius_R[:, None] + _FIT_SHIFTS
        centre_x_S = cx + _FIT_SHIFTS
        dy = y_HW - centre_y_RS[:, :, None, None, None]  # (R, Sy, 1, H, W)
        dx = x_HW - centre_x_S[:, None, None]  # (Sx, H, W)
        template = shape_inside(shape, dy, dx, radius_R[:, None, None, None, None])  # (R, Sy, Sx, H, W)
        inter = (template & window_HW).sum((-2, -1))
        union = (template | window_HW).sum((-2, -1))
        fits[shape] = float((inter / union).max())
    return fits


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose fitted template overlaps one blob best (see `shape_fits`)."""
    fits = shape_fits(mask)
    return max(fits, key=fits.get)


def foreground_blobs(foreground_HW: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the foreground without specks (H, W), one mask (H, W) per object blob).

    Opening by reconstruction: blobs too thin to hold a 3x3 square (generation specks) go, every pixel of the
    blobs that can stays, so object outlines are untouched; blobs under MIN_AREA_FRACTION of the image go too.
    """
    seeds = ndimage.binary_opening(foreground_HW, structure=np.ones((3, 3)))
    kept = ndimage.binary_propagation(seeds, mask=foreground_HW)
    labels, n = ndimage.label(kept, structure=np.ones((3, 3)))
    masks = [labels == i for i in range(1, n + 1)]
    return kept, [m for m in masks if m.sum() >= MIN_AREA_FRACTION * m.size]


def read_image(image: np.ndarray, world="classic") -> SceneReading:
    """Read an RGB uint8 image (H, W, 3) of `world` (a name or a `worlds.World`) with its oracle. Objects are sorted
    by grid cell."""
    from .worlds import get_world

    return get_world(world).read(image)


def read_classic_image(image: np.ndarray) -> SceneReading:
    """Read an RGB uint8 image (H, W, 3) of the classic world. Objects are sorted by grid cell."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"oracle expects an RGB image of shape (H, W, 3), got {image.shape}")
    img = image.astype(np.float32)
    size = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_index = _nearest(np.median(border, axis=0), _BG_RGB)
    foreground = np.sqrt(((img - _BG_RGB[bg_index]) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    objects = []
    for mask in foreground_blobs(foreground)[1]:
        area = int(mask.sum())
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
