"""In-memory capture for notebooks: the same prompts, sites and steps as a store capture, kept as tensors.

``CapturedActivations`` offers what training and evaluation read from a store (``entries``, ``reader``,
``identity``), so ``dl.train_sae(captured, site=...)`` works on it directly; ``captured[site, step]`` is the
``(images, tokens, width)`` tensor and ``captured.images`` the generated pictures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from difflens.adapters import Capture, ModelAdapter, SiteInfo


@dataclass
class CapturedActivations:
    """Activations ``acts[(site, step)]`` of shape (images, T, D), with the prompts and images they came from."""

    acts: dict[tuple[str, int], torch.Tensor]
    sites: dict[str, SiteInfo]
    prompts: list[dict]
    images: np.ndarray | None
    model: str
    weights: str
    prompts_hash: str
    holdout: dict | None = field(default=None)
    control: str = "none"
    """'none', or 'random-init': the acts are a random-init copy's, teacher-forced (`CaptureConfig.control`)"""
    control_settings: dict = field(default_factory=dict)
    """control_seed and control_weights (the copy's fingerprint) of a control capture; {} otherwise"""

    def entries(self) -> list[tuple[str, int]]:
        return list(self.acts)

    def __getitem__(self, key) -> torch.Tensor:
        """``captured[site, step]``, or ``captured[site]`` when one step was recorded."""
        site, step = key if isinstance(key, tuple) else (key, None)
        from difflens.store.sources import pick_entry

        return self.acts[pick_entry(self.entries(), site, step, "this capture")]

    def identity(self) -> dict:
        ident = {"path": None, "model": self.model, "weights": self.weights, "prompts_hash": self.prompts_hash,
                 "n_images": len(self.prompts)}
        if self.control != "none":
            ident.update(control=self.control, control_weights=self.control_settings.get("control_weights"))
        return ident

    def reader(self, site: str, step: int, split: str = "all"):
        """A reader over the rows of (site, step), traced to image ids and token positions."""
        from difflens.store.sources import TensorReader

        if split != "all":
            raise ValueError(f"an in-memory capture has no {split!r} split; capture to a store (out=...) to hold "
                             f"images out")
        acts_BTD = self.acts[(site, step)]
        B, T, D = acts_BTD.shape
        info = self.sites[site]
        token = torch.arange(T).repeat(B)
        grid_w = info.grid[1] if info.grid else None
        trace = {"image_id": torch.arange(B).repeat_interleave(T), "step": torch.full((B * T,), step),
                 "token_row": token // grid_w if grid_w else torch.full((B * T,), -1),
                 "token_col": token % grid_w if grid_w else torch.full((B * T,), -1)}
        reader = TensorReader(acts_BTD.reshape(B * T, D), trace)
        reader.site, reader.step = site, step
        return reader


def capture_in_memory(cfg, adapter: ModelAdapter) -> CapturedActivations:
    """Generate ``cfg``'s prompts batch by batch and keep every (site, step) as float32 tensors on the CPU."""
    from difflens.capture.runner import capture_control, plan_capture, prompts_hash

    plan = plan_capture(cfg, adapter)
    acts: dict[tuple[str, int], list[torch.Tensor]] = {(s.name, t): [] for s in plan.sites for t in plan.steps}

    def keep(site: str, step: int, acts_BTD: torch.Tensor) -> None:
        acts[(site, step)].append(acts_BTD.detach().to("cpu", torch.float32, copy=True))

    hook = Capture([s.name for s in plan.sites], keep, plan.steps)
    images = []
    with capture_control(cfg, adapter) as control:
        for start in range(0, len(plan.prompts), cfg.batch_size):
            batch = plan.prompts[start : start + cfg.batch_size]
            images.append(adapter.generate([p["prompt"] for p in batch], [p["seed"] for p in batch],
                                           num_steps=plan.num_steps, resolution=plan.resolution,
                                           guidance=plan.guidance, capture=hook))
    return CapturedActivations(
        acts={key: torch.cat(parts) for key, parts in acts.items()},
        sites={s.name: s for s in plan.sites},
        prompts=plan.prompts,
        images=np.concatenate(images) if cfg.save_images else None,
        model=adapter.name,
        weights=adapter.weights_fingerprint(),
        prompts_hash=prompts_hash(plan.prompts),
        control=cfg.control,
        control_settings={k: v for k, v in control.items() if k != "control"},
    )
