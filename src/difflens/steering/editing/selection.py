"""RIEBench feature selection and the feature-transfer delta.

For one pair, with codes of the source and the target generation (same seed) at one step and the edit mask:

    m_f      = mean over masked tokens of latent f's activation                       (per generation)
    p_f      = m_f / sum_g |m_g|                                                      (normalised)
    score_f  = p_f(target) - p_f(source)

The top-k latents by score (more active in the target) are added with the target's activations, the bottom-k
(more active in the source) subtracted with the source's, inside the mask, per token and per step:

    delta_t  = m1 * mask_t * ( sum_{f in top} a_tf(target) d_f  -  sum_{f in bottom} a_tf(source) d_f )

with d_f the latent's residual-space decoder row (`Dictionary.residual_directions`: a_f d_f is latent f's
contribution to the reconstruction). RIEBench scores with p(source) - p(target) and names its generations the other way
round; this is the same rule with "target" meaning the generation whose features are brought in.

Levers beside that rule (issue 26): the latents the ground truth names precise for the target / source concept
(`truth_latents`, `edit_concepts`) instead of the mean difference, and clamping instead of adding
(`clamp_values`: the top latents set to a typical target activation, the bottom ones ablated).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from difflens.reading import read_json


@torch.no_grad()
def dense_codes(dictionary, acts_ND: Tensor) -> Tensor:
    """(N, F) dense codes of residual-space activations. MLP neurons are their own codes (every neuron, not
    the dictionary's top-k), as RIEBench's neuron baseline uses them."""
    if getattr(dictionary, "kind", None) == "neurons":
        return dictionary.normalizer.normalize(acts_ND.float())
    return dictionary.encode(acts_ND.float()).to_dense(dictionary.num_latents)


def masked_mean(codes_TF: Tensor, mask_T: Tensor) -> Tensor:
    """(F,) mean activation over the tokens where mask_T > 0 (zeros when the mask is empty)."""
    m = (mask_T > 0).to(codes_TF.dtype)
    return (m[:, None] * codes_TF).sum(0) / m.sum().clamp_min(1)


def normalized(m_F: Tensor) -> Tensor:
    """m / sum |m| (all zeros stays zeros)."""
    return m_F / m_F.abs().sum().clamp_min(1e-12)


def feature_scores(source_TF: Tensor, target_TF: Tensor, mask_T: Tensor) -> Tensor:
    """(F,) p(target) - p(source) of the normalised masked mean activations."""
    return normalized(masked_mean(target_TF, mask_T)) - normalized(masked_mean(source_TF, mask_T))


def top_and_bottom_features(scores_F: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(top, bottom): up to k latents with the largest positive scores, up to k with the most negative ones."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, scores_F.numel())
    top = torch.topk(scores_F, k).indices
    bottom = torch.topk(-scores_F, k).indices
    return top[scores_F[top] > 0], bottom[scores_F[bottom] < 0]


def transfer_delta(directions_FD: Tensor, source_TF: Tensor, target_TF: Tensor, top: Tensor, bottom: Tensor,
                   mask_T: Tensor, m1: float) -> Tensor:
    """(T, D): m1 * mask * (target codes of `top` decoded - source codes of `bottom` decoded)."""
    add = target_TF[:, top] @ directions_FD[top]
    sub = source_TF[:, bottom] @ directions_FD[bottom]
    return m1 * (mask_T > 0).to(add.dtype)[:, None] * (add - sub)


def random_like(delta_TD: Tensor, directions_FD: Tensor, source_TF: Tensor, target_TF: Tensor, top: Tensor,
                bottom: Tensor, mask_T: Tensor, generator: torch.Generator) -> Tensor:
    """The random-latent control of one transfer delta: the selected latents' activations carried by as many
    latents drawn at random, each token's delta then rescaled to the selected delta's norm at that token."""
    F = directions_FD.shape[0]
    perm = torch.randperm(F, generator=generator)
    r_top, r_bottom = perm[: len(top)], perm[len(top): len(top) + len(bottom)]
    add = target_TF[:, top] @ directions_FD[r_top]
    sub = source_TF[:, bottom] @ directions_FD[r_bottom]
    rand = (mask_T > 0).to(add.dtype)[:, None] * (add - sub)
    norm = rand.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, rand * delta_TD.norm(dim=-1, keepdim=True) / norm.clamp_min(1e-12),
                       torch.zeros_like(rand))


# ------------------------------------------------------------------ levers: ground-truth latents, clamping
# the ground truth's concept family of each edited attribute (interpret/labels.py names concepts family:value)
CONCEPT_FAMILY = {"color": "color", "shape": "shape", "size": "size", "background": "bg", "pattern": "pattern",
                  "texture": "texture"}


def edit_concepts(pair) -> tuple[str, str] | None:
    """(source concept, target concept) of a one-attribute edit, e.g. ("color:red", "color:blue"); None when the
    pair has no scenes or edits something without a concept (position, add, remove)."""
    family = CONCEPT_FAMILY.get(pair.attribute or "")
    if family is None or not pair.judged:
        return None
    if pair.attribute == "background":
        return f"{family}:{pair.source_scene['background']}", f"{family}:{pair.target_scene['background']}"
    if pair.object is None:
        return None
    src = pair.source_scene["objects"][pair.object].get(pair.attribute)
    tgt = pair.target_scene["objects"][pair.object].get(pair.attribute)
    return f"{family}:{src}", f"{family}:{tgt}"


def truth_latents(truth: dict) -> dict[str, list[int]]:
    """{concept: latents} from a truth.json (`difflens features truth`): the latents precise for the concept on
    held-out images, most precise first; a concept no latent is precise for gets its single latent of best train
    F1 (truth.json's coverage_latent), so every scored concept names at least one latent."""
    rows = sorted((r for r in truth.get("latents", []) if r.get("precise")),
                  key=lambda r: -(r.get("upper_precision") or 0))
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r["precise_concept"], []).append(int(r["latent"]))
    for concept, latent in truth.get("coverage_latent", {}).items():
        out.setdefault(concept, [int(latent)])
    return out


def read_truth_latents(folder) -> dict[str, list[int]]:
    """`truth_latents` of a dictionary folder's truth.json (FileNotFoundError saying how to make it)."""
    from difflens.store.run_layout import truth_path

    path = truth_path(folder)
    if not Path(path).exists():
        raise FileNotFoundError(f"ground-truth selection needs {path}: run `difflens features truth --run {folder}`")
    return truth_latents(read_json(path, "ground-truth report", expect=dict))


def chosen_by_truth(latents: dict[str, list[int]], concepts: tuple[str, str] | None, k: int) -> tuple[Tensor, Tensor]:
    """(top, bottom): up to k latents of the target concept and up to k of the source concept (none for a pair
    without concepts); a latent of both is dropped from both (it says nothing about the edit)."""
    if concepts is None:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    src, tgt = (latents.get(c, [])[:k] for c in concepts)
    both = set(src) & set(tgt)
    return (torch.tensor([f for f in tgt if f not in both], dtype=torch.long),
            torch.tensor([f for f in src if f not in both], dtype=torch.long))


def typical_activation(codes_TF: Tensor, mask_T: Tensor) -> Tensor:
    """(F,) each latent's mean activation over the masked tokens where it fires (0 where it never does)."""
    m = (mask_T > 0).to(codes_TF.dtype)[:, None]
    fires = (codes_TF > 0).to(codes_TF.dtype) * m
    return (codes_TF * fires).sum(0) / fires.sum(0).clamp_min(1)


def clamp_values(target_TF: Tensor, top: Tensor, bottom: Tensor, mask_T: Tensor, m1: float) -> Tensor:
    """(F,) the code each latent is clamped to, NaN for latents left alone: the top latents at m1 times their
    typical activation in the target generation (`typical_activation`), the bottom latents at 0 (ablated)."""
    values = torch.full((target_TF.shape[1],), float("nan"), dtype=target_TF.dtype)
    values[bottom] = 0.0
    values[top] = m1 * typical_activation(target_TF, mask_T)[top]
    return values


def random_clamp_values(values_F: Tensor, top: Tensor, bottom: Tensor, generator: torch.Generator) -> Tensor:
    """The random control of a clamp: as many random latents set to the same values (the top latents' values
    carried by random latents, as many other random latents ablated)."""
    perm = torch.randperm(values_F.numel(), generator=generator)
    r_top, r_bottom = perm[: len(top)], perm[len(top): len(top) + len(bottom)]
    out = torch.full_like(values_F, float("nan"))
    out[r_bottom] = 0.0
    out[r_top] = values_F[top]
    return out
