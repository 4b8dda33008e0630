"""Where an edit applies: a region spec -> per-image token weights ``(B, T)`` on a site's token grid.

Image tokens are row-major over the grid (token = row * grid_w + col). Weights are in [0, 1]; a mask image is
area-averaged onto the grid, so a token half covered gets weight 0.5 (the SDXL-Turbo app's rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ACTIVE = "active"  # the edit applies where its latent fires, decided at the hook per step


def _box(spec, grid: tuple[int, int]) -> np.ndarray:
    try:
        x0, y0, x1, y1 = (float(v) for v in spec)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"a box region is x0,y0,x1,y1 in image fractions, got {spec!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"box region {spec!r} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                         f"(fractions of the image width and height)")
    gh, gw = grid
    ys, xs = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw
    inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    if not inside.any():
        raise ValueError(f"box region {spec!r} contains no token centre of the {gh}x{gw} grid: make it larger")
    return inside.astype(np.float32)


def _cells(text: str, grid: tuple[int, int]) -> np.ndarray:
    gh, gw = grid
    out = np.zeros(grid, dtype=np.float32)
    try:
        pairs = [tuple(int(v) for v in cell.split(",")) for cell in text.split(";") if cell.strip()]
    except ValueError:
        raise ValueError(f"a cells region is 'cells:r,c;r,c', got {text!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"a cells region is 'cells:r,c;r,c', got {text!r}")
    for r, c in pairs:
        if not (0 <= r < gh and 0 <= c < gw):
            raise ValueError(f"cell ({r}, {c}) lies outside the {gh}x{gw} token grid")
        out[r, c] = 1.0
    return out


def mask_values(mask_HW: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A user's mask image as (H, W) values: an RGB(A) painting's strongest channel, values above 1 read as 0..255."""
    m = np.asarray(mask_HW, dtype=dtype)
    if m.ndim == 3:  # an RGB(A) painting: any channel counts
        m = m.max(-1)
    if m.ndim != 2:
        raise ValueError(f"a mask image must be (H, W), got shape {m.shape}")
    if m.max(initial=0) > 1:
        m = m / 255.0
    return m


def mask_to_grid(mask_HW: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-average a mask image (H, W; bool or [0, 1]) onto the token grid -> (gh, gw) weights."""
    m = mask_values(mask_HW)
    if not np.isfinite(m).all():
        raise ValueError("the mask image has non-finite values")
    if m.min() < 0 or m.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (or 0..255)")
    if m.shape[0] < grid[0] or m.shape[1] < grid[1]:
        raise ValueError(f"mask image {m.shape} is smaller than the {grid[0]}x{grid[1]} token grid")
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(m))[None, None], grid)
    return pooled[0, 0].numpy()


BACKGROUND = "background"  # every token outside the oracle's objects (embedded world)


def object_index(spec: Any) -> int | None:
    """N of an "object:N" region, else None."""
    if isinstance(spec, str) and spec.startswith("object:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"an object region is 'object:N' (N = 0, 1, ... in the oracle's order), got {spec!r}") from None
        if n < 0:
            raise ValueError(f"object index must be >= 0, got {spec!r}")
        return n
    return None


def parse_region(spec: Any, grid: tuple[int, int] | None) -> np.ndarray | str | None:
    """A static region as (gh, gw) weights, ACTIVE, an "object:N" spec (resolved later), or None (all tokens).

    Strings: "x0,y0,x1,y1" (box), "cells:r,c;r,c", "object:N", "background", "active", "all". Text-stream sites (grid None)
    take no region but None or "active".
    """
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return None
    if isinstance(spec, str) and spec.strip() == ACTIVE:
        return ACTIVE
    if grid is None:
        raise ValueError(f"region {spec!r} needs image tokens, but the site holds text tokens (use no region or 'active')")
    if object_index(spec) is not None or (isinstance(spec, str) and spec.strip() == BACKGROUND):
        return spec.strip()
    if isinstance(spec, str):
        if spec.startswith("cells:"):
            return _cells(spec[len("cells:"):], grid)
        return _box(spec.replace("box:", "").split(","), grid)
    if isinstance(spec, (np.ndarray, torch.Tensor)) and np.asarray(spec).ndim >= 2:
        return mask_to_grid(np.asarray(spec), grid)
    return _box(spec, grid)


def object_weights(readings: list, spec: str, grid: tuple[int, int]) -> np.ndarray:
    """(B, gh, gw) weights of an oracle region of each unsteered image: "object:N" or "background"."""
    if spec == BACKGROUND:
        return np.stack([1 - mask_to_grid(np.any([o.mask for o in r.objects], axis=0), grid) if r.objects
                         else np.ones(grid, np.float32) for r in readings])
    n = object_index(spec)
    out = []
    for b, reading in enumerate(readings):
        if n >= len(reading.objects):
            raise ValueError(f"region {spec}: the oracle finds {len(reading.objects)} object(s) in unsteered "
                             f"image {b}, so there is no object {n}")
        out.append(mask_to_grid(reading.objects[n].mask, grid))
    return np.stack(out)
