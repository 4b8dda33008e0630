"""The embedded default model: a small FLUX-architecture text-to-image model of the shapes world."""

from .config import ShapesModelConfig
from .pipeline import DEFAULT_STEPS, ShapesPipeline, load_embedded

__all__ = ["DEFAULT_STEPS", "ShapesModelConfig", "ShapesPipeline", "load_embedded"]
