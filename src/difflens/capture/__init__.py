"""Activation capture: run a model over prompts and record sites into an activation store."""

import importlib

_EXPORTS = ["CaptureConfig", "resolve_prompts", "resolve_sites", "run_capture"]
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module("difflens.capture.runner"), name)
    raise AttributeError(f"module 'difflens.capture' has no attribute {name!r}")
