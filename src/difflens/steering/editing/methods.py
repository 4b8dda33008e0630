"""The benchmark's edit methods, each turned into one adapter `Intervention` per generation batch.

    <dictionary>  RIEBench feature transfer with a dictionary's latents at its own site (whitened SAE, plain
                  SAE, ITDA, MLP neurons: each a dictionary folder of the run), swept over k and m1
    dense         the dense activation difference, m1 * mask * (target acts - source acts), at any image site
    random        the control: as many random latents of a reference dictionary, matched in norm per token
                  to that dictionary's transfer delta (`selection.random_like`)
    swap          the upper bound: the target prompt generated with the same seed (no intervention)

Every delta is a per-image, per-token (T, D) tensor per step, precomputed from the unedited source and
target generations (their captured activations), added by `TokenDeltas`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from difflens.adapters.base import Intervention, per_image

from .selection import dense_codes, feature_scores, random_like, top_and_bottom_features, transfer_delta

BUILTIN_METHODS = ("dense", "random", "swap")


@dataclass
class TokenDeltas(Intervention):
    """Add a precomputed (B, T, D) delta per step to `site` (steps without one are untouched). Under
    classifier-free guidance the batch is [uncond; cond]: the delta is tiled over both halves and `halves`
    then decides which of them receive it, as for any intervention."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)

    def delta(self, value_BTD: torch.Tensor, step: int) -> torch.Tensor | None:
        d = self.deltas.get(step)
        if d is None:
            return None
        return per_image(d.to(value_BTD), value_BTD.shape[0], f"{self.site}: deltas")


def token_deltas(site: str, deltas: dict[int, torch.Tensor], halves: str = "both") -> TokenDeltas:
    """A `TokenDeltas` for {step: (B, T, D)} (its vector_D is a zero stand-in that validation checks)."""
    dim = next(iter(deltas.values())).shape[-1]
    return TokenDeltas(site, torch.zeros(dim), steps=sorted(deltas), halves=halves, deltas=deltas)


@dataclass
class PairActs:
    """Captured activations of one pair at one site: source and target (S, T, D) over the edit steps."""

    source: torch.Tensor
    target: torch.Tensor


class FeatureMethod:
    """RIEBench feature transfer with one dictionary at its own site."""

    def __init__(self, name: str, dictionary, site: str):
        self.name, self.dictionary, self.site = name, dictionary, site
        self.directions = dictionary.residual_directions()

    def codes(self, acts: PairActs) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense codes (S, T, F) of the source and target activations."""
        S, T, D = acts.source.shape
        both = dense_codes(self.dictionary, torch.cat([acts.source, acts.target]).reshape(-1, D))
        both = both.reshape(2, S, T, -1)
        return both[0], both[1]

    def selection(self, src_STF, tgt_STF, mask_T, select_index: int, k: int):
        return top_and_bottom_features(feature_scores(src_STF[select_index], tgt_STF[select_index], mask_T), k)

    def deltas(self, src_STF, tgt_STF, mask_T, select_index: int | None, k: int,
               m1: float) -> tuple[torch.Tensor, list]:
        """(S, T, D) transfer deltas over the steps, and the (top, bottom) latents chosen at each step.
        `select_index`: the step (index into the edited steps) whose codes select; None: each step its own."""
        S = src_STF.shape[0]
        chosen = [self.selection(src_STF, tgt_STF, mask_T, s if select_index is None else select_index, k)
                  for s in (range(S) if select_index is None else [select_index])]
        chosen = chosen if select_index is None else chosen * S
        out = torch.stack([transfer_delta(self.directions, src_STF[s], tgt_STF[s], *chosen[s], mask_T, m1)
                           for s in range(S)])
        return out, chosen

    def random_deltas(self, delta_STD, src_STF, tgt_STF, chosen, mask_T, generator) -> torch.Tensor:
        """The matched-norm random-latent control of `delta_STD` (one random draw for all steps)."""
        state = generator.get_state()
        out = []
        for s in range(src_STF.shape[0]):
            generator.set_state(state)  # the same random latents at every step
            out.append(random_like(delta_STD[s], self.directions, src_STF[s], tgt_STF[s], *chosen[s], mask_T,
                                   generator))
        return torch.stack(out)


def dense_delta(acts: PairActs, mask_T: torch.Tensor, m1: float) -> torch.Tensor:
    """(S, T, D): m1 * mask * (target - source) activations."""
    return m1 * (mask_T > 0).to(acts.source.dtype)[None, :, None] * (acts.target - acts.source)
