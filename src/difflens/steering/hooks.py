"""The hook side of an edit: an :class:`~difflens.adapters.base.Intervention` that reads the site's value,
encodes it with the dictionary where it must, and adds only the change of one latent's contribution."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from difflens.adapters.base import Intervention, SiteInfo, per_image


@dataclass
class LatentEdit(Intervention):
    """Change latent ``latent``'s contribution ``a * vector_D`` (``vector_D``: its residual-space decoder
    direction at native norm) at ``site``.

    ``weights_BT``: per-image token weights (None: every token); ``active_only``: also restrict to tokens where
    the latent fires at this step. ``amount``: activation units (add: added; clamp: the value set);
    ``factor``: scale's multiplier. ``vector_by_step``: the direction at each denoising step, for a dictionary
    with one normaliser per step (its residual direction differs by step; None: ``vector_D`` at every step).
    The latent's activation is read with the denoising step's normaliser (the dictionary ignores the step when
    it has one normaliser).
    """

    dictionary: torch.nn.Module | None = None
    latent: int = 0
    mode: str = "add"
    amount: float = 0.0
    factor: float = 1.0
    weights_BT: torch.Tensor | None = None
    active_only: bool = False
    vector_by_step: dict[int, torch.Tensor] | None = None
    log: list = field(default_factory=list)  # (step, tokens edited, mean |change of activation|) per call

    def validate(self, info: SiteInfo, num_steps: int | None = None) -> None:
        super().validate(info, num_steps)
        if self.weights_BT is not None and self.weights_BT.shape[-1] != info.tokens:
            raise ValueError(f"edit of latent {self.latent} on {self.site}: its region has "
                             f"{self.weights_BT.shape[-1]} tokens, the site has {info.tokens}")

    def activation(self, value_BTD: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """(B, T) activation of the latent on every token at denoising ``step`` (0 where it is not among the
        active ones)."""
        return self.dictionary.latent_activation(value_BTD.float(), self.latent, step)

    def delta(self, value_BTD: torch.Tensor, step: int) -> torch.Tensor | None:
        B = value_BTD.shape[0]
        needs_codes = self.mode != "add" or self.active_only
        act_BT = self.activation(value_BTD, step) if needs_codes else None
        if self.mode == "add":
            change_BT = torch.full(value_BTD.shape[:2], float(self.amount), device=value_BTD.device)
        elif self.mode == "clamp":
            change_BT = float(self.amount) - act_BT
        elif self.mode == "scale":
            change_BT = (float(self.factor) - 1.0) * act_BT
        else:  # ablate
            change_BT = -act_BT
        if self.weights_BT is not None:
            change_BT = change_BT * per_image(self.weights_BT.to(change_BT), B, f"region of latent {self.latent}")
        if self.active_only:
            change_BT = change_BT * (act_BT > 0)
        touched = change_BT != 0
        self.log.append((step, int(touched.sum()), float(change_BT.abs().sum() / touched.sum().clamp_min(1))))
        if not touched.any():
            return None  # a no-op edit adds nothing: the image stays bit-identical
        vector_D = self.vector_D if self.vector_by_step is None else self.vector_by_step[step]
        return change_BT.to(value_BTD)[..., None] * vector_D.to(value_BTD)
