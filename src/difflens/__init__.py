"""difflens: dictionary learning on text-to-image diffusion models."""

__version__ = "0.1.0"
