"""TopK sparse autoencoder (Gao et al. 2024) as used by the FLUX paper.

Paper form (input already normalised, see ``normalization.py``)::

    e = TopK(W_enc (x − b_post + b_pre)),   y = W_dec e + b_dec

difflens stores the sparsify parametrisation, which contains the paper's as a special case::

    e = TopK(ReLU(W_enc (x − b_dec) + b_enc)),   y = W_dec e + b_dec

* ``b_dec`` plays the role of ``b_post``: the decoder bias, subtracted from the input before
  encoding (so the encoder sees the centred input) and added back after decoding.
* The paper's input-space ``b_pre`` enters only through ``W_enc b_pre``, which is a per-latent
  bias: ``b_enc = W_enc b_pre``. We learn ``b_enc`` (F) directly — a superset, since
  ``W_enc b_pre`` is restricted to the D-dimensional column space of W_enc.
* The ReLU only zeroes negative values among the k winners, so codes are non-negative and
  sparsify's ``SparseCoder`` produces identical outputs from the same tensors.

Shapes (the package's alphabet): B tokens, D input width, F latents (``num_latents``), K active latents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import Dictionary, SparseCodes
from .normalization import Normalizer
from .sparse_ops import sparse_decode, topk_encode


@dataclass
class SAEConfig:
    """Architecture of a TopK SAE. ``num_latents = 0`` means ``expansion_factor × d_in``.

    Defaults follow the FLUX paper's main setting (≈ 21× expansion, k = 64 on width 3072,
    PCA whitening); for small models pick k so that k ≪ num_latents.
    """

    arch: ClassVar[str] = "topk"  # the family's name (``sae_families``: subclasses add their settings)

    num_latents: int = 0
    expansion_factor: int = 16
    k: int = 64
    normalization: str = "pca"

    def resolve(self, d_in: int) -> "SAEConfig":
        n = self.num_latents or self.expansion_factor * d_in
        if not 0 < self.k <= n:
            raise ValueError(f"k must be in 1..num_latents ({n}), got {self.k}")
        return replace(self, num_latents=n, expansion_factor=max(1, n // d_in))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SAEOutput:
    """Training-time forward result in the normalised space."""

    recon_BD: Tensor
    values_BK: Tensor
    indices_BK: Tensor
    aux_values_BA: Tensor
    aux_indices_BA: Tensor
    prefix_recons_BD: list[Tensor] | None = None
    """Matryoshka: reconstructions by each nested prefix of the latents but the full one (None: no prefixes)"""
    l0: Tensor | None = None
    """JumpReLU: the batch's active count, differentiable in the thresholds (straight-through)"""


class TopKSAE(Dictionary):
    kind = "sae"

    def __init__(self, d_in: int, cfg: SAEConfig, normalizer: Normalizer | None = None, seed: int = 0):
        cfg = cfg.resolve(d_in)
        super().__init__(d_in, normalizer if normalizer is not None else Normalizer(d_in, cfg.normalization))
        self.cfg = cfg
        n_latents = cfg.num_latents
        gen = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(n_latents, d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        # Decoder rows start unit-norm; the encoder starts as the decoder's transpose (Gao et al.).
        self.W_enc = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    # ---- core ----
    @torch.no_grad()
    def initialise(self, z_BD: Tensor) -> None:
        """Data-dependent start from the first training batch (normalised): the decoder bias at its mean."""
        self.b_dec.copy_(z_BD.mean(0))

    def forward_train(self, z_BD: Tensor, dead_idx: Tensor | None = None, k_aux: int = 0) -> SAEOutput:
        """Differentiable forward in normalised space; AuxK codes over ``dead_idx`` when given."""
        vals, idx, aux_vals, aux_idx = self.encode_train(z_BD, dead_idx, k_aux)
        recon = sparse_decode(vals, idx, self.W_dec) + self.b_dec
        return SAEOutput(recon, vals, idx, aux_vals, aux_idx)

    def encode_train(self, z_BD: Tensor, dead_idx: Tensor | None, k_aux: int) -> tuple[Tensor, ...]:
        """Differentiable training codes (values_BK, indices_BK, aux_values_BA, aux_indices_BA)."""
        return topk_encode(z_BD, self.b_dec, self.W_enc, self.b_enc, self.k, dead_idx, k_aux, reuse_buffer=True)

    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        vals, idx, _, _ = topk_encode(z_BD, self.b_dec, self.W_enc, self.b_enc, self.k)
        return SparseCodes(vals, idx)

    @torch.no_grad()
    def latent_activation(self, acts: Tensor, latent: int, step: int | None = None) -> Tensor:
        """One latent's TopK activation without selecting the top k of every token: it is active where fewer
        than k latents score higher (same result as ``encode`` up to exact ties; ~5x faster)."""
        z_BD = self._flat_normalized(acts, step)
        pre_BF = (z_BD - self.b_dec) @ self.W_enc.t() + self.b_enc
        pre_B = pre_BF[:, latent]
        out_B = torch.zeros_like(pre_B)
        rows = torch.nonzero(pre_B > 0).squeeze(1)  # only positive scores can be active; rank just those
        if rows.numel():
            pre_RF, pre_R = pre_BF.index_select(0, rows), pre_B.index_select(0, rows)
            in_top_k = (pre_RF > pre_R[:, None]).sum(-1) < self.k
            out_B.index_copy_(0, rows, pre_R * in_top_k)
        return out_B.reshape(acts.shape[:-1])

    def decode_normalized(self, codes: SparseCodes) -> Tensor:
        return sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec

    def decoder_rows(self) -> Tensor:
        return self.W_dec.detach()

    def family_tensors(self) -> dict[str, Tensor]:
        """Weights a family adds to TopK's four (saved beside them; TopK: none, so sparsify can read the file)."""
        return {}

    def load_family_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore :meth:`family_tensors` from a weights file."""

    def observe(self, out: SAEOutput, rate: float) -> None:
        """After each optimiser step: what a family learns from the batch besides its weights (TopK: nothing)."""

    def calibrate(self, z_BD: Tensor) -> None:
        """At the end of training, on the last (normalised) batch: a family's inference settings (TopK: none)."""

    def match_l0(self, z_BD: Tensor) -> None:
        """Set a threshold family's inference thresholds so that codes of ``z_BD`` (normalised) keep k latents a
        token on average (TopK keeps k by construction: nothing to set)."""

    # ---- decoder-norm constraint ----
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after every optimiser step)."""
        norms = torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_min_(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project each decoder row's gradient onto the row's tangent space (before the step)."""
        if self.W_dec.grad is None:
            return
        # einsum reduces row by row without vecdot's (F × D) temporary: ~3x faster on CPU
        parallel_D1 = torch.einsum("dn,dn->d", self.W_dec.grad, self.W_dec).unsqueeze(1)
        self.W_dec.grad.addcmul_(parallel_D1, self.W_dec, value=-1.0)
