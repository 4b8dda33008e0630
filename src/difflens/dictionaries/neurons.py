"""MLP-neuron baseline: the captured MLP hidden activations themselves as a "dictionary".

Latent i is neuron i; its decoder row is the i-th unit vector of the hidden space. With
``k = None`` the codes are all neurons (exact reconstruction); with ``k`` set, each token keeps
its k most active neurons, a sparse baseline at the same L0 as an SAE. No normalisation is
applied: neurons live in the raw hidden space.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Dictionary, SparseCodes


class NeuronBasis(Dictionary):
    kind = "neurons"

    def __init__(self, d_in: int, k: int | None = None):
        super().__init__(d_in)
        if k is not None and not 0 < k <= d_in:
            raise ValueError(f"k must be in 1..{d_in} for the neuron baseline, got {k}")
        self.k = k

    @property
    def num_latents(self) -> int:
        return self.d_in

    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        if self.k is None:
            idx = torch.arange(self.d_in, device=z_BD.device).expand(z_BD.shape[0], -1)
            return SparseCodes(z_BD.clone(), idx.contiguous())
        vals, idx = z_BD.topk(self.k, dim=-1, sorted=False)
        return SparseCodes(vals, idx)

    def decode_normalized(self, codes: SparseCodes) -> Tensor:
        return codes.to_dense(self.d_in)

    def decoder_rows(self) -> Tensor:
        return torch.eye(self.d_in)
