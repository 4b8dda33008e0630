"""Model adapters: one interface (`ModelAdapter`) over FLUX.1, SDXL and the embedded model.

See `difflens.adapters.base` for the site naming scheme and the hook mechanism.
Names are imported lazily so that `difflens --help` does not import torch.
"""

import importlib

_EXPORTS = {
    "Capture": "base", "HookPlan": "base", "Intervention": "base", "ModelAdapter": "base", "SiteInfo": "base",
    "DEFAULT_MODEL": "registry", "MODEL_NAMES": "registry", "LoadOptions": "registry", "load_adapter": "registry",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"difflens.adapters.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'difflens.adapters' has no attribute {name!r}")
