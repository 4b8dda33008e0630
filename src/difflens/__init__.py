"""difflens: dictionary learning on text-to-image diffusion models.

    import difflens as dl
    model = dl.load_model("embedded")
    acts = dl.capture(model, n_images=64, sites=["double.1.img.out"], steps=[3])
    sae = dl.train_sae(acts, k=16, num_latents=768, num_tokens=200_000)

The researcher's API lives in :mod:`difflens.api` (imported lazily, so ``difflens --help`` does not import torch).

Tensor-shape suffixes mean the same everywhere: B batch (images, or tokens when a batch is of tokens),
T tokens of one image (or of one prompt), D model width (the residual stream or MLP hidden at a site),
F dictionary latents (features), K active latents per token, H×W image pixels, C channels. E.g. ``acts_BTD``
is a batch of images' activations at a site; ``codes_BK`` a batch of tokens' sparse codes.
"""

import importlib

from ._version import __version__

_API = ["load_model", "capture", "open_store", "train_sae", "train_itda", "neuron_baseline", "load_dictionary", "save_dictionary",
        "evaluate", "evaluate_steps", "compare_per_step", "feature_index", "load_index", "feature_card", "autointerp", "steer", "Edit"]
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name == "capture":  # the capture package is callable: dl.capture(...) runs difflens.api.capture
        return importlib.import_module("difflens.capture")
    if name in _API:
        return getattr(importlib.import_module("difflens.api"), name)
    raise AttributeError(f"module 'difflens' has no attribute {name!r}")
