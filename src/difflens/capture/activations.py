"""The capture stage as one call, `dl.capture`: record sites while a model generates, into memory or a store.

It lives with its stage, not in :mod:`difflens.api` (which re-exports it), so the callable `difflens.capture`
package reaches it without importing anything above the capture layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def capture(model, prompts: list[str] | None = None, *, n_images: int | None = None, sites: list[str] | None = None,
            steps: list[int] | str | None = None, out: str | Path | None = None, **settings: Any):
    """Record ``sites`` at denoising ``steps`` while ``model`` generates.

    prompts: a list of prompts, or None for shapes-world captions (``n_images`` of them). ``out`` None keeps
    everything in memory and returns a :class:`~difflens.capture.memory.CapturedActivations` (index it with
    ``[site, step]`` for ``(images, tokens, width)`` tensors); with ``out`` the rows go to an activation store
    (resumable) and the opened store is returned. settings: CaptureConfig fields (seed, batch_size, guidance,
    num_steps, holdout, ...). ``control="random-init"`` (seed ``control_seed``) records a randomly initialised
    copy of the denoiser fed the trained model's own inputs at every step, while the trained model draws the
    images: a control for what dictionaries find.
    """
    from difflens.adapters import load_adapter
    from difflens.store import ActivationStore

    from .memory import capture_in_memory
    from .runner import CaptureConfig, run_capture

    if isinstance(model, str):
        model = load_adapter(model)
    cfg = CaptureConfig(out=str(out) if out is not None else "", model=model.name, sites=sites, steps_to_record=steps,
                        n_images=n_images, **settings)
    if prompts is not None:
        cfg.prompts = list(prompts)
    if out is None:
        return capture_in_memory(cfg, model)
    return ActivationStore.open(run_capture(cfg, adapter=model))
