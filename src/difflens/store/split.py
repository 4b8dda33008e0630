"""The held-out split: which images of a store are kept out of training, by a rule with no state.

Every image gets the key sha256("difflens-holdout:<seed>:<image_id>"); the k images with the
smallest keys are held out, k = round(fraction * n_images), at least 1 when fraction > 0 and the
store has >= 2 images, at most n_images - 1 (training always keeps an image). The choice depends
only on (seed, image_id, n_images), so it is the same on every machine and library version.
store.json records it as "holdout": {"fraction", "seed", "image_ids"}.
"""

from __future__ import annotations

import hashlib
import numbers

SPLITS = ("all", "train", "held-out")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in SPLITS)}; got {split!r}")
    return split


def check_fraction(fraction: float) -> float:
    """The held-out fraction as a float in [0, 1); anything else is a ValueError (checked before a capture starts)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (0 <= fraction < 1):
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction!r}")
    return float(fraction)


def holdout_count(fraction: float, n_images: int) -> int:
    """How many of `n_images` images a split of `fraction` holds out."""
    fraction = check_fraction(fraction)
    if fraction == 0 or n_images < 2:
        return 0
    return min(max(round(fraction * n_images), 1), n_images - 1)


def _key(seed: int, image_id: int) -> bytes:
    return hashlib.sha256(f"difflens-holdout:{int(seed)}:{int(image_id)}".encode()).digest()


def choose_holdout(n_images: int, fraction: float, seed: int = 0) -> dict | None:
    """{"fraction", "seed", "image_ids" (sorted)} for images 0..n_images-1, or None when fraction is 0."""
    if isinstance(n_images, bool) or not isinstance(n_images, numbers.Integral) or n_images < 0:
        raise ValueError(f"cannot split a store of {n_images!r} images")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"holdout seed must be an integer, got {seed!r}")
    k = holdout_count(fraction, int(n_images))
    if k == 0 and fraction == 0:
        return None
    ranked = sorted(range(int(n_images)), key=lambda i: _key(seed, i))
    return {"fraction": float(fraction), "seed": int(seed), "image_ids": sorted(ranked[:k])}


def describe_holdout(holdout: dict | None, n_images: int | None) -> str:
    """The one-line summary `cache info` and `cache split` print."""
    if not holdout:
        return "none"
    held = len(holdout["image_ids"])
    train = f"train {n_images - held} images" if n_images is not None else "train ?"
    return f"{train} / held-out {held} images (fraction {holdout['fraction']:g}, seed {holdout['seed']})"
