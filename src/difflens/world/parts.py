"""Named parts of composite objects: a house's roof and body, a snowman's head and body, a tree's crown and trunk.

Every composite stacks its two parts vertically, so a part boundary is one pixel row. The renderer and the
oracle both cut an object's mask with `split_parts`, from the mask alone (its row widths), so the oracle's
parts equal the rendered ones whenever it reads the same mask:

* house, tree: the top part (roof, crown) ends at its wide base; the row just below is the largest drop in
  width (the roof overhangs the body, the crown the trunk), searched for away from the object's top and
  bottom rows (where ragged edges make drops of their own).
* snowman: the head ends at the neck, the narrowest row between the two circles' widest rows.
"""

from __future__ import annotations

import numpy as np

from .palette import COMPOSITES

# where a part boundary is searched for, as shares of the object's height from the top: the snowman's neck
# (true: ~43 %), the house's eaves (~45 %) and the tree's crown base (~72 %)
NECK_WINDOW = (0.2, 0.65)
EAVES_WINDOW = (0.25, 0.85)


def split_row(shape: str, mask_HW: np.ndarray) -> int | None:
    """Index of the last image row of the top part of a composite object's mask (None: no split found)."""
    rows = np.nonzero(mask_HW.any(axis=1))[0]
    if len(rows) < 3:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    width_R = mask_HW[top: bottom + 1].sum(axis=1).astype(np.float64)
    n = len(width_R)
    if shape in ("house", "tree"):
        lo, hi = _window(EAVES_WINDOW, n - 1)
        return top + lo + int(np.argmax(width_R[lo:hi] - width_R[lo + 1: hi + 1]))
    if shape == "snowman":
        lo, hi = _window(NECK_WINDOW, n)
        return top + lo + int(np.argmin(width_R[lo:hi]))
    raise ValueError(f"{shape!r} is not a composite shape (composites: {', '.join(COMPOSITES)})")


def _window(shares: tuple[float, float], n: int) -> tuple[int, int]:
    """[lo, hi) row indices of a window given as shares of n rows (never empty)."""
    lo = min(int(shares[0] * n), n - 1)
    return lo, max(int(np.ceil(shares[1] * n)), lo + 1)


def split_parts(shape: str, mask_HW: np.ndarray) -> dict[str, np.ndarray]:
    """{part name: bool (H, W) mask} of a composite object (`COMPOSITES[shape]`, top part first); {} otherwise."""
    if shape not in COMPOSITES:
        return {}
    upper, lower = COMPOSITES[shape]
    cut = split_row(shape, mask_HW)
    above = np.zeros(mask_HW.shape, bool)
    if cut is not None:
        above[: cut + 1] = True
    return {upper: mask_HW & above, lower: mask_HW & ~above}
