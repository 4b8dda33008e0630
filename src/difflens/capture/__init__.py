"""Activation capture: run a model over prompts and record sites into an activation store (or memory).

This package is also ``dl.capture``, the API function: calling the module runs
:func:`difflens.capture.activations.capture` (a package and a function cannot share the name ``difflens.capture``
otherwise).
"""

import importlib
import sys
import types

_EXPORTS = ["CaptureConfig", "resolve_prompts", "resolve_sites", "run_capture", "plan_capture"]
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module("difflens.capture.runner"), name)
    raise AttributeError(f"module 'difflens.capture' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .activations import capture

        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
