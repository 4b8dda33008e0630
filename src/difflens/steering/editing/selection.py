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
"""

from __future__ import annotations

import torch
from torch import Tensor


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
