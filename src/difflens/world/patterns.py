"""Rich-world textures (backgrounds) and patterns (objects) as tone maps shared by the renderer and the oracle.

A tone map is float32 (H, W) in [0, 1]: 0 paints a surface's first colour, 1 its second (a background's
base colour and its second tone; an object's colour and its shade), values between (gradients) blend them.
Both are anchored to the image, not to an object, so the oracle can lay the same map over what it reads.
Periods are given at 64 px and scale with the image; every period is >= 8 px at 64 px so a 4x4-pixel token
of the embedded model sees both tones, and phases are offset from the 4 px token grid for the same reason.
"""

from __future__ import annotations

import numpy as np

TEXTURES = ("plain", "striped", "dotted", "checked", "gradient")  # backgrounds
PATTERNS = ("solid", "striped", "dotted", "checked")  # objects

STRIPE_PERIOD = 12  # background stripes run diagonally: (x + y) mod 12, so ~8.5 px across the stripes
DOT_PERIOD, BG_DOT_RADIUS, OBJ_DOT_RADIUS = 8, 1.6, 2.1
CHECK_SIDE = 8  # background checks: 8 px squares; object checks: 4 px squares, period 8
OBJ_STRIPE_PERIOD = 8  # object stripes are horizontal: 4 px of colour, 4 px of shade
PHASE = 2  # px offset from the token grid


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a size x size image, in units of a 64 px image."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    scale = np.float32(64 / size)
    return y * scale, x * scale


def _dots(y: np.ndarray, x: np.ndarray, radius: float) -> np.ndarray:
    dy = np.mod(y - PHASE, DOT_PERIOD) - DOT_PERIOD / 2
    dx = np.mod(x - PHASE, DOT_PERIOD) - DOT_PERIOD / 2
    return (dy**2 + dx**2 <= radius**2).astype(np.float32)


def texture_tone(texture: str, size: int) -> np.ndarray:
    """float32 (H, W) tone of a background texture (0: base colour, 1: second tone)."""
    y, x = _coords(size)
    if texture == "plain":
        return np.zeros((size, size), np.float32)
    if texture == "striped":
        return (np.mod(np.floor(y) + np.floor(x) + PHASE, STRIPE_PERIOD) < STRIPE_PERIOD / 2).astype(np.float32)
    if texture == "dotted":
        return _dots(y, x, BG_DOT_RADIUS)
    if texture == "checked":
        return (np.mod(np.floor((y - PHASE) / CHECK_SIDE) + np.floor((x - PHASE) / CHECK_SIDE), 2) == 1
                ).astype(np.float32)
    if texture == "gradient":  # base colour at the top, second tone at the bottom
        return np.broadcast_to((y[:, :1] - y[0, 0]) / max(y[-1, 0] - y[0, 0], 1e-6), (size, size)).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r} (known: {', '.join(TEXTURES)})")


def pattern_tone(pattern: str, size: int) -> np.ndarray:
    """float32 (H, W) tone of an object pattern (0: the object's colour, 1: its shade), to be cut by its mask."""
    y, x = _coords(size)
    if pattern == "solid":
        return np.zeros((size, size), np.float32)
    if pattern == "striped":
        return (np.mod(np.floor(y) - PHASE, OBJ_STRIPE_PERIOD) >= OBJ_STRIPE_PERIOD / 2).astype(np.float32)
    if pattern == "dotted":
        return _dots(y, x, OBJ_DOT_RADIUS)
    if pattern == "checked":
        half = OBJ_STRIPE_PERIOD / 2
        return (np.mod(np.floor((y - PHASE) / half) + np.floor((x - PHASE) / half), 2) == 1).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")


def blend(first: np.ndarray, second: np.ndarray, tone_HW: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): first colour where tone 0, second where 1, rounded linear blend between."""
    a, b = np.asarray(first, np.float32), np.asarray(second, np.float32)
    return np.clip(np.rint(a + tone_HW[..., None] * (b - a)), 0, 255).astype(np.uint8)
