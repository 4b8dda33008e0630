"""Steering with features: edit one latent's contribution at a site, over a region and a step window.

``steer(model, dictionary, edits, prompts, seeds)`` returns unsteered and steered images from the same seeds;
an :class:`Edit` is (latent, mode, strength, unit, region, steps, guidance, site). ``editing`` holds the editing
benchmark (RIEBench's protocol, scored by the shapes world's oracle).
"""

from .edits import MODES, UNITS, Edit, parse_steps
from .regions import parse_region
from .steer import SteerResult, steer, typical_activation

__all__ = ["Edit", "MODES", "UNITS", "SteerResult", "parse_region", "parse_steps", "steer", "typical_activation"]
