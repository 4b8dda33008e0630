"""The benchmark's edit methods, each turned into one adapter `Intervention` per generation batch.

    <dictionary>  RIEBench feature transfer with a dictionary's latents at its own site (whitened SAE, plain
                  SAE, ITDA, MLP neurons: each a dictionary folder of the run), swept over k and m1
    dense         the dense activation difference, m1 * mask * (target acts - source acts), at any image site
    random        the control: as many random latents of a reference dictionary, matched in norm per token
                  to that dictionary's transfer delta (`selection.random_like`)
    swap          the upper bound: the target prompt generated with the same seed (no intervention)

Every delta is a per-image, per-token (T, D) tensor per step, precomputed from the unedited source and
target generations (their captured activations), added by `TokenDeltas`. The levers of issue 26 change how a
feature edit is made, one option each (`FeatureEdit`): which latents (RIEBench's mean difference or the ground
truth's precise latents), how they are applied (added, or clamped: the live codes of the chosen latents set to
values, read from the site as it is generated), and whether each edited token keeps its original norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from difflens.adapters.base import Intervention, per_image

from .selection import (chosen_by_truth, clamp_values, dense_codes, edit_concepts, feature_scores, random_clamp_values,
                        random_like, read_truth_latents, top_and_bottom_features, transfer_delta)

BUILTIN_METHODS = ("dense", "random", "swap")


@dataclass
class LatentClamp:
    """Set latents of a dictionary to fixed codes on masked tokens, reading the site's live value: the delta is
    (value_f - live code_f) d_f summed over the clamped latents. values_BF: the code per image and latent, NaN
    for latents left alone; mask_BT: the tokens edited."""

    dictionary: object
    directions_FD: torch.Tensor
    values_BF: torch.Tensor
    mask_BT: torch.Tensor

    def delta(self, value_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = value_BTD.shape
        values = per_image(self.values_BF, B, "clamp values")
        mask = per_image(self.mask_BT, B, "clamp mask")
        clamped = ~torch.isnan(values)  # (B, F)
        cols = clamped.any(0).nonzero().flatten()  # only the clamped latents' codes are needed
        codes = dense_codes(self.dictionary, value_BTD.reshape(-1, D)).reshape(B, T, -1)[..., cols]
        diff = torch.where(clamped[:, None, cols], values[:, None, cols] - codes, torch.zeros_like(codes))
        return (mask[..., None] > 0).to(diff) * (diff @ self.directions_FD[cols].to(diff))


def norm_preserving(value_BTD: torch.Tensor, delta_BTD: torch.Tensor) -> torch.Tensor:
    """The delta that lands each edited token (nonzero delta) where value + delta points, at the value's own
    norm (keeps the edited activations at the norms the next block expects); untouched tokens stay untouched."""
    edited = value_BTD + delta_BTD
    scale = value_BTD.norm(dim=-1, keepdim=True) / edited.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    touched = delta_BTD.abs().amax(dim=-1, keepdim=True) > 0
    return torch.where(touched, edited * scale - value_BTD, delta_BTD)


@dataclass
class TokenDeltas(Intervention):
    """Add a precomputed (B, T, D) delta per step to `site` (steps without one are untouched), or, per step in
    `clamps`, the live delta of a `LatentClamp`; with `preserve_norm` each edited token is rescaled to its
    unedited norm (`norm_preserving`). Under classifier-free guidance the batch is [uncond; cond]: the edit is
    tiled over both halves and `halves` then decides which of them receive it, as for any intervention."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    clamps: dict[int, LatentClamp] = field(default_factory=dict)
    preserve_norm: bool = False

    def delta(self, value_BTD: torch.Tensor, step: int) -> torch.Tensor | None:
        if step in self.clamps:
            d = self.clamps[step].delta(value_BTD.float()).to(value_BTD)
        elif step in self.deltas:
            d = per_image(self.deltas[step].to(value_BTD), value_BTD.shape[0], f"{self.site}: deltas")
        else:
            return None
        return norm_preserving(value_BTD, d) if self.preserve_norm else d


def token_deltas(site: str, deltas: dict[int, torch.Tensor], halves: str = "both", *,
                 clamps: dict[int, LatentClamp] | None = None, preserve_norm: bool = False, dim: int | None = None
                 ) -> TokenDeltas:
    """A `TokenDeltas` for {step: (B, T, D)} and/or {step: LatentClamp} (its vector_D is a zero stand-in that
    validation checks; `dim`: the site's width, needed without deltas)."""
    clamps = clamps or {}
    if dim is None:
        dim = next(iter(deltas.values())).shape[-1] if deltas else next(iter(clamps.values())).directions_FD.shape[1]
    return TokenDeltas(site, torch.zeros(dim), steps=sorted({*deltas, *clamps}), halves=halves, deltas=deltas,
                       clamps=clamps, preserve_norm=preserve_norm)


@dataclass
class PairActs:
    """Captured activations of one pair at one site: source and target (S, T, D) over the edit steps."""

    source: torch.Tensor
    target: torch.Tensor


@dataclass
class FeatureEdit:
    """How a feature method edits (one lever each, issue 26).

    selection: mean-difference (RIEBench's top / bottom k by normalised masked mean difference) or truth (the
        dictionary's truth.json: up to k latents precise for the target concept added, up to k precise for the
        source concept removed; `selection.truth_latents`)
    apply: add (the transfer delta, m1 x the target's codes of the added latents minus the source's of the
        removed ones) or clamp (live: the added latents' codes set to m1 x their typical target activation, the
        removed ones' to 0, on the masked tokens)
    preserve_norm: each edited token rescaled to its unedited norm
    """

    selection: Literal["mean-difference", "truth"] = "mean-difference"
    apply: Literal["add", "clamp"] = "add"
    preserve_norm: bool = False

    def __post_init__(self):
        if self.selection not in ("mean-difference", "truth"):
            raise ValueError(f"selection must be mean-difference or truth, got {self.selection!r}")
        if self.apply not in ("add", "clamp"):
            raise ValueError(f"apply must be add or clamp, got {self.apply!r}")


@dataclass
class SiteEdit:
    """One method's edit of a batch of pairs at one site: additive deltas (B, S, T, D) or clamp values (B, S, F)
    with the token masks (B, T), over the edited steps."""

    site: str
    deltas_BSTD: torch.Tensor | None = None
    clamp_BSF: torch.Tensor | None = None
    mask_BT: torch.Tensor | None = None


class FeatureMethod:
    """RIEBench feature transfer with one dictionary at its own site (and the levers of `FeatureEdit`)."""

    def __init__(self, name: str, dictionary, site: str, how: FeatureEdit | None = None):
        self.name, self.dictionary, self.site = name, dictionary, site
        self.how = how or FeatureEdit()
        self.directions = dictionary.residual_directions()
        self.truth = None
        if self.how.selection == "truth":
            if dictionary.path is None:
                raise ValueError(f"ground-truth selection needs dictionary {name}'s folder (its truth.json)")
            self.truth = read_truth_latents(dictionary.path)

    def codes(self, acts: PairActs) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense codes (S, T, F) of the source and target activations."""
        S, T, D = acts.source.shape
        both = dense_codes(self.dictionary, torch.cat([acts.source, acts.target]).reshape(-1, D))
        both = both.reshape(2, S, T, -1)
        return both[0], both[1]

    def selection(self, src_STF, tgt_STF, mask_T, select_index: int, k: int, pair=None):
        if self.truth is not None:
            return chosen_by_truth(self.truth, None if pair is None else edit_concepts(pair), k)
        return top_and_bottom_features(feature_scores(src_STF[select_index], tgt_STF[select_index], mask_T), k)

    def chosen(self, src_STF, tgt_STF, mask_T, select_index: int | None, k: int, pair=None) -> list:
        """(top, bottom) latents per edited step. `select_index`: the step (index into the edited steps) whose
        codes select; None: each step its own."""
        S = src_STF.shape[0]
        if select_index is None:
            return [self.selection(src_STF, tgt_STF, mask_T, s, k, pair) for s in range(S)]
        return [self.selection(src_STF, tgt_STF, mask_T, select_index, k, pair)] * S

    def deltas(self, src_STF, tgt_STF, mask_T, select_index: int | None, k: int,
               m1: float, pair=None) -> tuple[torch.Tensor, list]:
        """(S, T, D) transfer deltas over the steps, and the (top, bottom) latents chosen at each step."""
        chosen = self.chosen(src_STF, tgt_STF, mask_T, select_index, k, pair)
        out = torch.stack([transfer_delta(self.directions, src_STF[s], tgt_STF[s], *chosen[s], mask_T, m1)
                           for s in range(src_STF.shape[0])])
        return out, chosen

    def clamps(self, src_STF, tgt_STF, mask_T, select_index: int | None, k: int, m1: float,
               pair=None) -> tuple[torch.Tensor, list]:
        """(S, F) clamp values over the steps (`selection.clamp_values`), and the latents chosen at each step."""
        chosen = self.chosen(src_STF, tgt_STF, mask_T, select_index, k, pair)
        return torch.stack([clamp_values(tgt_STF[s], *chosen[s], mask_T, m1) for s in range(src_STF.shape[0])]), chosen

    def random_deltas(self, delta_STD, src_STF, tgt_STF, chosen, mask_T, generator) -> torch.Tensor:
        """The matched-norm random-latent control of `delta_STD` (one random draw for all steps)."""
        state = generator.get_state()
        out = []
        for s in range(src_STF.shape[0]):
            generator.set_state(state)  # the same random latents at every step
            out.append(random_like(delta_STD[s], self.directions, src_STF[s], tgt_STF[s], *chosen[s], mask_T,
                                   generator))
        return torch.stack(out)

    def random_clamps(self, values_SF, chosen, generator) -> torch.Tensor:
        """The random control of clamp values (`selection.random_clamp_values`; one draw for all steps)."""
        state = generator.get_state()
        out = []
        for s in range(values_SF.shape[0]):
            generator.set_state(state)
            out.append(random_clamp_values(values_SF[s], *chosen[s], generator))
        return torch.stack(out)

    def intervention(self, edit: SiteEdit, steps: list[int], halves: str, sl: slice = slice(None)) -> TokenDeltas:
        """The batch slice `sl` of a `SiteEdit` of this method as one intervention."""
        if edit.clamp_BSF is not None:
            clamps = {st: LatentClamp(self.dictionary, self.directions, edit.clamp_BSF[sl, s], edit.mask_BT[sl])
                      for s, st in enumerate(steps)}
            return token_deltas(edit.site, {}, halves, clamps=clamps, preserve_norm=self.how.preserve_norm)
        return token_deltas(edit.site, {st: edit.deltas_BSTD[sl, s] for s, st in enumerate(steps)}, halves,
                            preserve_norm=self.how.preserve_norm)


def dense_delta(acts: PairActs, mask_T: torch.Tensor, m1: float) -> torch.Tensor:
    """(S, T, D): m1 * mask * (target - source) activations."""
    return m1 * (mask_T > 0).to(acts.source.dtype)[None, :, None] * (acts.target - acts.source)
