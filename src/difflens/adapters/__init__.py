"""Model adapters: one interface (`ModelAdapter`) over FLUX.1, SDXL and the embedded model.

See `difflens.adapters.base` for the site naming scheme and the hook mechanism.
"""

from difflens.adapters.base import Capture, HookPlan, Intervention, ModelAdapter, SiteInfo
from difflens.adapters.registry import DEFAULT_MODEL, MODEL_NAMES, LoadOptions, load_adapter

__all__ = ["Capture", "HookPlan", "Intervention", "ModelAdapter", "SiteInfo", "DEFAULT_MODEL", "MODEL_NAMES",
           "LoadOptions", "load_adapter"]
