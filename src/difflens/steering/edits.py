"""What a user asks of a feature: one :class:`Edit` (latent, mode, strength, unit, region, steps, guidance, site).

Modes change only the named latent's contribution to the residual stream (its activation times its
residual-space decoder direction ``d_D``), so the dictionary's reconstruction error is kept and a no-op edit
leaves the image bit-identical:
  * ``add``    adds ``amount * d_D`` (amount: the strength in activation units)
  * ``clamp``  sets the latent's activation to ``amount`` (adds ``(amount - a) * d_D``)
  * ``scale``  multiplies the activation by ``strength`` (adds ``(strength - 1) * a * d_D``)
  * ``ablate`` sets it to 0 (adds ``-a * d_D``)

Strength units (add and clamp; scale's strength is a plain factor):
  * ``typical`` (default): multiples of the latent's typical activation, the mean of its top images'
    activations (each image's largest token activation) in the feature index at the edit's step, so "+3"
    means the same for an SAE, ITDA or MLP neurons;
  * ``norm``: multiples of the site's mean image-token norm in the unsteered generation (the FLUX paper
    used 0.8) -- the added vector's norm is ``strength * mean norm``;
  * ``raw``: activation units of the dictionary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from difflens.adapters.base import GUIDANCE_HALVES

MODES = ("add", "clamp", "scale", "ablate")
UNITS = ("typical", "norm", "raw")


@dataclass
class Edit:
    """One feature edit; see the module docstring for modes and units."""

    latent: int
    mode: str = "add"
    strength: float = 3.0
    unit: str = "typical"
    region: Any = None
    """None (every image token), (x0, y0, x1, y1) image fractions, "cells:r,c;r,c", a mask image (H, W),
    "object:N" (the oracle's object N in the unsteered image), "background" (outside the oracle's objects), or
    "active" (where the latent fires)"""
    steps: Any = None
    """None (every step), (start, end) step indices with end excluded, or (0.0, 0.5) fractions of the schedule"""
    guidance: str = "both"
    """halves of a classifier-free-guidance batch to edit: "both" (the edit means the same at any guidance
    scale), "cond" (conditional only, amplified by the scale) or "contrast" (+cond, -uncond)"""
    site: str | None = None
    """None: the dictionary's own site; any site of the same width (e.g. the neighbouring block)"""

    def check(self, num_latents: int) -> None:
        """Raise ValueError for settings that are wrong whatever the model (called before any generation)."""
        if not _is_integer(self.latent):
            raise ValueError(f"latent must be an integer, got {self.latent!r}")
        if not 0 <= self.latent < num_latents:
            raise ValueError(f"latent {self.latent} is outside the dictionary (0..{num_latents - 1})")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.guidance not in GUIDANCE_HALVES:
            raise ValueError(f"guidance must be one of {', '.join(GUIDANCE_HALVES)}, got {self.guidance!r}")
        if not _is_finite(self.strength):
            raise ValueError(f"strength must be a finite number, got {self.strength!r}")

    def describe(self) -> dict:
        """JSON-able settings (a mask image is summarised by its shape)."""
        out = asdict(self)
        if hasattr(self.region, "shape"):
            out["region"] = f"mask image {tuple(self.region.shape)}"
        elif isinstance(self.region, tuple):
            out["region"] = list(self.region)
        if isinstance(self.steps, tuple):
            out["steps"] = list(self.steps)
        return out


def _is_number(value: Any) -> bool:
    """A real number a setting may hold: int, float or their numpy kinds, never a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_finite(value: Any) -> bool:
    """A finite real number (any int is, however large: no float conversion to overflow)."""
    return _is_number(value) and (isinstance(value, (int, np.integer)) or math.isfinite(value))


def _is_integer(value: Any) -> bool:
    """An integer value (1 and 1.0 both are; 1.5, nan, inf, True and "1" are not)."""
    return _is_finite(value) and int(value) == value


def _number(text: str):
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else float(text)


def parse_steps(steps: Any, num_steps: int) -> list[int]:
    """Steps as sorted step indices of a ``num_steps`` schedule (edits, the editing benchmark, the CLIs).

    None or "all": every step. A window (start, end) or "start:end" excludes end: ints are step indices, floats
    are fractions of the schedule rounded to the nearest step ("0:0.5" of 8 steps = steps 0..3). A list of ints,
    or "3" / "1,3": those steps.
    """
    if steps is None or (isinstance(steps, str) and steps.strip() == "all"):
        return list(range(num_steps))
    if isinstance(steps, str):
        try:
            if ":" in steps:
                start, end = steps.split(":")
                steps = (_number(start) if start.strip() else 0, _number(end) if end.strip() else num_steps)
            else:
                steps = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"steps must be start:end (end excluded), a comma list of integers or all, got "
                             f"{steps!r}") from None
    if _is_integer(steps):  # one step index
        steps = [steps]
    if isinstance(steps, tuple):
        if len(steps) != 2:
            raise ValueError(f"a step window is (start, end), got {steps!r}")
        start, end = steps
        if not (_is_number(start) and _is_number(end)):
            raise ValueError(f"a step window is (start, end) of step indices or fractions, got {steps!r}")
        if isinstance(start, float) or isinstance(end, float):
            if not (0 <= start <= 1 and 0 <= end <= 1):
                raise ValueError(f"a step window in fractions of the schedule must lie in [0, 1], got {steps!r}")
            start, end = round(start * num_steps), round(end * num_steps)
        if start < 0 or end > num_steps:
            raise ValueError(f"step window [{start}, {end}) lies outside this run's steps 0..{num_steps - 1}")
        if end <= start:
            raise ValueError(f"empty step window [{start}, {end})")
        return list(range(int(start), int(end)))
    listed = list(steps) if isinstance(steps, Iterable) and not isinstance(steps, (str, bytes, dict)) else None
    if listed is None or not all(map(_is_integer, listed)):
        raise ValueError(f"steps must be None, all, a window (start, end) or a list of step indices, got {steps!r}")
    steps = listed
    picked = sorted({int(s) for s in steps})
    if not picked:
        raise ValueError("empty step list")
    bad = [s for s in picked if not 0 <= s < num_steps]
    if bad:
        raise ValueError(f"steps {bad} lie outside this run's steps 0..{num_steps - 1}")
    return picked
