"""ITDA: Inference-Time Decomposition of Activations (Leask et al. 2025), batched.

The dictionary is a growing set of unit-norm atoms, each a (normalised) activation picked from
the data. Codes come from non-negative gradient pursuit. Training streams batches: every token
whose relative reconstruction loss ``‖z − ẑ‖² / ‖z‖²`` (per-token FVU when the normalisation
centres the data) exceeds ``threshold`` is a candidate; candidates are added (worst first) up to
``max_add_per_batch`` and ``max_atoms``, optionally skipping near-duplicates (cosine above
``prune_cos`` to an atom or an earlier candidate). Every atom keeps its provenance
(store row id, image id, step, token row/col).

Gradient pursuit keeps the support as (indices_BK, coefficients_BK): each iteration does ONE
dense matmul, residual @ atomsᵀ (B × F), to score atoms; the update direction and the
reconstruction are sparse sums over ≤ k atoms (``embedding_bag``), never a dense (B × F)
coefficient matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Dictionary, SparseCodes
from .normalization import Normalizer

PROVENANCE_KEYS = ("row_id", "image_id", "step", "token_row", "token_col")


@dataclass
class ITDAConfig:
    """ITDA hyper-parameters (defaults: the FLUX paper's double-block setting)."""

    k: int = 32
    """atoms per token (gradient-pursuit iterations)"""
    threshold: float = 0.3
    """per-token relative loss above which a token joins the dictionary"""
    max_atoms: int = 65536
    """dictionary size cap"""
    max_add_per_batch: int | None = 512
    """atoms added per batch at most (none: no cap)"""
    prune_cos: float | None = 0.8
    """skip candidates this close (cosine) to an atom (none: keep near-duplicates)"""
    normalization: Literal["none", "standardise", "pca"] = "pca"
    """input normalisation fitted on the training data: none, standardise or pca (whitening)"""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(ITDAConfig)}


def gradient_pursuit(x_BD: Tensor, atoms_FD: Tensor, k: int) -> SparseCodes:
    """Non-negative gradient pursuit: k iterations, support grows by argmax correlation.

    Per iteration t (support S of size t+1, residual r):
      corr = r @ atomsᵀ (the one matmul); the new atom is argmax over atoms not yet in S;
      g = corr[S]; c = Σ_S g_j atom_j; step a = <c, r> / ‖c‖²;
      coef_S ← ReLU(coef_S + a g); r = x − Σ_S coef_j atom_j.
    """
    B, n_atoms = x_BD.shape[0], atoms_FD.shape[0]
    steps = min(k, n_atoms)
    idx = torch.zeros(B, k, dtype=torch.long, device=x_BD.device)
    coef = x_BD.new_zeros(B, k)
    if n_atoms == 0:
        return SparseCodes(coef, idx)
    resid = x_BD
    atoms_DF = atoms_FD.t()
    for t in range(steps):
        corr_BF = resid @ atoms_DF
        g_prev = corr_BF.gather(1, idx[:, :t])
        if t:
            corr_BF.scatter_(1, idx[:, :t], float("-inf"))
        new = corr_BF.argmax(1, keepdim=True)
        idx[:, t : t + 1] = new
        g = torch.cat([g_prev, corr_BF.gather(1, new)], 1)
        support = idx[:, : t + 1]
        c_BD = F.embedding_bag(support, atoms_FD, per_sample_weights=g, mode="sum")
        step_B = (c_BD * resid).sum(1) / (c_BD * c_BD).sum(1).clamp_min(1e-30)
        coef[:, : t + 1] = (coef[:, : t + 1] + step_B[:, None] * g).clamp_min_(0)
        resid = x_BD - F.embedding_bag(support, atoms_FD, per_sample_weights=coef[:, : t + 1], mode="sum")
    return SparseCodes(coef, idx)


def relative_loss(x_BD: Tensor, recon_BD: Tensor) -> Tensor:
    """Per-token ‖x − x̂‖² / ‖x‖², shape (B,)."""
    return (x_BD - recon_BD).pow(2).sum(1) / x_BD.pow(2).sum(1).clamp_min(1e-30)


class ITDA(Dictionary):
    kind = "itda"

    def __init__(self, d_in: int, cfg: ITDAConfig | None = None, normalizer: Normalizer | None = None):
        cfg = cfg or ITDAConfig()
        super().__init__(d_in, normalizer if normalizer is not None else Normalizer(d_in, cfg.normalization))
        self.cfg = cfg
        self.size = 0
        # Capacity grows in powers of two so additions are amortised O(1) copies.
        self.register_buffer("_atoms", torch.zeros(0, d_in))
        self.provenance: dict[str, Tensor] = {key: torch.zeros(0, dtype=torch.long) for key in PROVENANCE_KEYS}

    @property
    def atoms(self) -> Tensor:
        """(F, D) unit-norm atoms in the normalised space."""
        return self._atoms[: self.size]

    @property
    def num_latents(self) -> int:
        return self.size

    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        return gradient_pursuit(z_BD, self.atoms, self.cfg.k)

    def decode_normalized(self, codes: SparseCodes) -> Tensor:
        if self.size == 0:
            return codes.values.new_zeros(codes.values.shape[0], self.d_in)
        return F.embedding_bag(codes.indices, self.atoms, per_sample_weights=codes.values, mode="sum")

    def decoder_rows(self) -> Tensor:
        return self.atoms

    # ---- growth ----
    def add_atoms(self, z_BD: Tensor, provenance: dict[str, Tensor]) -> int:
        """Append unit-normalised rows of ``z_BD`` with their provenance; returns how many were added."""
        room = self.cfg.max_atoms - self.size
        z_BD = z_BD[: max(room, 0)]
        n = z_BD.shape[0]
        if n == 0:
            return 0
        if self.size + n > self._atoms.shape[0]:
            cap = max(1, self._atoms.shape[0])
            while cap < self.size + n:
                cap *= 2
            grown = self._atoms.new_zeros(cap, self.d_in)
            grown[: self.size] = self.atoms
            self._atoms = grown
        self._atoms[self.size : self.size + n] = z_BD / z_BD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for key in PROVENANCE_KEYS:
            vals = torch.as_tensor(provenance.get(key, torch.full((n,), -1)), dtype=torch.long)[:n]
            self.provenance[key] = torch.cat([self.provenance[key], vals.cpu()])
        self.size += n
        return n

    def select_new_atoms(self, z_BD: Tensor, loss_B: Tensor) -> Tensor:
        """Indices (into the batch) of tokens to add, worst-reconstructed first."""
        cand = torch.nonzero(loss_B > self.cfg.threshold).squeeze(1)
        cand = cand[torch.argsort(loss_B[cand], descending=True, stable=True)]
        cap = self.cfg.max_atoms - self.size
        if self.cfg.max_add_per_batch is not None:
            cap = min(cap, self.cfg.max_add_per_batch)
        if self.cfg.prune_cos is None:
            return cand[: max(cap, 0)]
        unit = z_BD[cand] / z_BD[cand].norm(dim=1, keepdim=True).clamp_min(1e-12)
        keep = near_duplicate_keep(unit, self.cfg.prune_cos, existing=self.atoms, limit=max(cap, 0))
        return cand[keep]

    def prune(self, cos: float) -> int:
        """Drop every atom that has an earlier atom at cosine > ``cos``; returns how many were dropped.

        Blocked over rows, so memory is O(block × F) rather than O(F²).
        """
        atoms, block = self.atoms, 4096
        drop = torch.zeros(self.size, dtype=torch.bool, device=atoms.device)
        for s in range(0, self.size, block):
            sim = atoms[s : s + block] @ atoms[: s + block].t()
            rows = torch.arange(sim.shape[0], device=atoms.device)[:, None] + s
            sim.masked_fill_(torch.arange(sim.shape[1], device=atoms.device)[None] >= rows, float("-inf"))
            drop[s : s + block] = sim.max(1).values > cos
        keep = torch.nonzero(~drop).squeeze(1)
        dropped = self.size - int(keep.numel())
        atoms = self.atoms[keep].clone()
        self.provenance = {key: v[keep.cpu()] for key, v in self.provenance.items()}
        self._atoms, self.size = atoms, atoms.shape[0]
        return dropped

    def load_atoms(self, atoms_FD: Tensor, provenance: dict[str, Tensor]) -> None:
        self._atoms = atoms_FD.float().contiguous()
        self.size = atoms_FD.shape[0]
        self.provenance = {key: provenance[key].long() for key in PROVENANCE_KEYS}


def near_duplicate_keep(unit_BD: Tensor, cos: float, existing: Tensor | None = None, limit: int | None = None) -> Tensor:
    """Greedy in order: keep row i unless it has cosine > ``cos`` with an existing atom or a kept row."""
    C = unit_BD.shape[0]
    if C == 0:
        return torch.zeros(0, dtype=torch.long, device=unit_BD.device)
    ok = torch.ones(C, dtype=torch.bool, device=unit_BD.device)
    if existing is not None and existing.shape[0]:
        ok &= (unit_BD @ existing.t()).max(1).values <= cos
    sim = unit_BD @ unit_BD.t()
    kept: list[int] = []
    ok_list = ok.tolist()
    for i in range(C):
        if limit is not None and len(kept) >= limit:
            break
        if ok_list[i] and (not kept or bool((sim[i, kept] <= cos).all())):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=unit_BD.device)
