"""Activation capture: run a model over prompts and record sites into an activation store."""

from difflens.capture.runner import CaptureConfig, resolve_prompts, resolve_sites, run_capture

__all__ = ["CaptureConfig", "resolve_prompts", "resolve_sites", "run_capture"]
