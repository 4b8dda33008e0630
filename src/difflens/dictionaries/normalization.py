"""Input normalisation for dictionaries: none | standardise | PCA whitening.

The FLUX residual stream is extremely anisotropic (a few directions carry most of the
variance), which leaves > 99 % of a plain SAE's latents dead. Whitening fixes that. The map is
affine and invertible:

    z_BD = ((x_BD − mean_D) @ rotation_DD) / scale_D          (encode side)
    x_BD = (z_BD · scale_D) @ rotation_NNᵀ + mean_D            (decode side)

* ``none``:        mean 0, rotation I, scale 1
* ``standardise``: per-dimension mean and standard deviation, rotation I
* ``pca``:         rotation = eigenvectors of the covariance (columns, descending variance),
                   scale = √eigenvalue (floored at ``eps_rel`` × the largest, so directions the data
                   never visits do not explode)

Statistics are accumulated in float64 over a stream of batches (shifted by the first batch's
mean for numerical stability), so the fit can use many more tokens than fit in memory. Fitting
on fewer than ``min_tokens_per_dim × width`` tokens is refused: the reference implementation
whitened with 1,024 tokens in 3,072 dimensions, i.e. a rank-deficient covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

KINDS = ("none", "standardise", "pca")


@dataclass
class CovarianceAccumulator:
    """Streaming float64 first and second moments (optionally summed across DDP ranks)."""

    dim: int
    count: int = 0
    shift: Tensor | None = None
    sum_D: Tensor | None = None
    outer_DD: Tensor | None = None

    def update(self, acts_BD: Tensor) -> None:
        if acts_BD.ndim != 2 or acts_BD.shape[1] != self.dim:
            raise ValueError(f"expected activations of shape (batch, {self.dim}), got {tuple(acts_BD.shape)}")
        x = acts_BD.detach().to("cpu", torch.float64)
        if x.shape[0] == 0:
            return
        if not torch.isfinite(x).all():
            raise ValueError("activations contain NaN or inf; cannot fit a normalisation")
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum_D = torch.zeros(self.dim, dtype=torch.float64)
            self.outer_DD = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        x = x - self.shift
        self.count += x.shape[0]
        self.sum_D += x.sum(0)
        self.outer_DD.addmm_(x.t(), x)

    def all_reduce(self) -> None:
        """Sum the moments over ranks (the shift is taken from rank 0 first)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.shift is None:  # this rank saw no tokens: contribute zeros
            self.shift = torch.zeros(self.dim, dtype=torch.float64)
            self.sum_D = torch.zeros(self.dim, dtype=torch.float64)
            self.outer_DD = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        # Re-centre every rank on rank 0's shift so the sums add up.
        shift0 = self.shift.clone()
        dist.broadcast(shift0, 0)
        delta = self.shift - shift0
        n = self.count
        self.outer_DD += torch.outer(self.sum_D, delta) + torch.outer(delta, self.sum_D) + n * torch.outer(delta, delta)
        self.sum_D += n * delta
        self.shift = shift0
        count = torch.tensor([float(n)], dtype=torch.float64)
        for t in (count, self.sum_D, self.outer_DD):
            dist.all_reduce(t)
        self.count = int(count.item())

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        if self.count < 2:
            raise ValueError("need at least 2 tokens to fit a normalisation")
        m = self.sum_D / self.count
        cov = (self.outer_DD - self.count * torch.outer(m, m)) / (self.count - 1)
        return m + self.shift, (cov + cov.t()) / 2


def accumulate(batches: Iterable[Tensor], dim: int, max_tokens: int | None = None) -> CovarianceAccumulator:
    """The moments of a stream of (B, D) batches (up to ``max_tokens`` tokens), summed over DDP ranks."""
    acc = CovarianceAccumulator(dim)
    for acts in batches:
        if max_tokens is not None and acc.count >= max_tokens:
            break
        if max_tokens is not None:
            acts = acts[: max_tokens - acc.count]
        acc.update(acts)
    acc.all_reduce()
    return acc


class Normalizer(torch.nn.Module):
    """Affine input normalisation stored beside a dictionary; see the module docstring."""

    def __init__(self, dim: int, kind: str = "none"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("rotation", torch.eye(dim) if kind == "pca" else torch.zeros(0))
        # Eigenvalues (descending) for PCA, per-dimension variances for standardise: the spectrum.
        self.register_buffer("variances", torch.zeros(dim))

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        batches: Iterable[Tensor],
        dim: int,
        kind: str = "pca",
        *,
        max_tokens: int | None = None,
        min_tokens_per_dim: float = 10.0,
        eps_rel: float = 1e-6,
    ) -> "Normalizer":
        """Fit from a stream of (B, D) batches, using up to ``max_tokens`` tokens."""
        norm = cls(dim, kind)
        if kind == "none":
            return norm
        norm.set_from_moments(accumulate(batches, dim, max_tokens), min_tokens_per_dim=min_tokens_per_dim,
                              eps_rel=eps_rel)
        return norm

    @classmethod
    def in_frame(cls, acc: CovarianceAccumulator, frame: "Normalizer", *, min_tokens_per_dim: float = 10.0,
                 eps_rel: float = 1e-6) -> "Normalizer":
        """A normaliser of ``acc``'s data (its mean, its variance along each axis) in ``frame``'s axes: for PCA,
        ``frame``'s rotation (not this data's own eigenvectors) with each rotated coordinate standardised.
        Per-step normalisers share one frame so that a latent's decoder row means one residual direction at every
        step; whitening each step in its own eigenbasis gave each step unrelated axes (on the demo site the
        eigenvectors of steps 3 and 7 overlap by 0.18 on average), and one dictionary across those steps then
        had to learn a dictionary per step (:func:`~difflens.dictionaries.train.data.fit_normalizer`)."""
        norm = cls(frame.dim, frame.kind)
        if frame.kind != "pca":
            norm.set_from_moments(acc, min_tokens_per_dim=min_tokens_per_dim, eps_rel=eps_rel)
            return norm
        norm._check_count(acc, min_tokens_per_dim)
        mean, cov = acc.mean_cov()
        rotation = frame.rotation.double()
        var = (rotation.t() @ cov @ rotation).diagonal().clamp_min(0)
        norm.mean.copy_(mean.float())
        norm.rotation.copy_(frame.rotation)
        norm._set_variances(var, eps_rel)
        return norm

    def _set_variances(self, var: torch.Tensor, eps_rel: float) -> None:
        """Per-axis variances and the scales they give (floored at eps_rel × the largest, so no axis divides by 0)."""
        self.variances.copy_(var.float())
        self.scale.copy_(var.clamp_min(eps_rel * float(var.max()) + 1e-30).sqrt().float())

    def _check_count(self, acc: CovarianceAccumulator, min_tokens_per_dim: float) -> None:
        need = int(min_tokens_per_dim * self.dim)
        if acc.count < need:
            raise ValueError(
                f"{self.kind} normalisation needs at least {need} tokens ({min_tokens_per_dim:g} × width {self.dim}) "
                f"but only {acc.count} were available; capture more tokens or lower min_tokens_per_dim"
            )

    def set_from_moments(self, acc: CovarianceAccumulator, *, min_tokens_per_dim: float = 10.0, eps_rel: float = 1e-6):
        self._check_count(acc, min_tokens_per_dim)
        mean, cov = acc.mean_cov()
        self.mean.copy_(mean.float())
        if self.kind == "standardise":
            self._set_variances(cov.diagonal().clamp_min(0), eps_rel)
        else:
            evals, evecs = torch.linalg.eigh(cov)
            order = torch.argsort(evals, descending=True)
            evals, evecs = evals[order].clamp_min(0), evecs[:, order]
            # Fix the sign of each eigenvector (largest-magnitude entry positive): deterministic output.
            signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
            evecs = evecs * torch.where(signs == 0, 1.0, signs)
            self.rotation.copy_(evecs.float())
            self._set_variances(evals, eps_rel)  # sorted: evals.max() is evals[0]

    # ---- the map -------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"activation width {x.shape[-1]} does not match the dictionary's width {self.dim}")

    def normalize(self, x_BD: Tensor) -> Tensor:
        """Residual space → the dictionary's input space."""
        self._check(x_BD)
        if self.kind == "none":
            return x_BD
        z = x_BD - self.mean.to(x_BD.dtype)
        if self.kind == "pca":
            z = z @ self.rotation.to(x_BD.dtype)
        return z / self.scale.to(x_BD.dtype)

    def denormalize(self, z_BD: Tensor) -> Tensor:
        """The dictionary's input space → residual space (exact inverse of :meth:`normalize`)."""
        if self.kind == "none":
            return z_BD
        return self.to_residual_directions(z_BD) + self.mean.to(z_BD.dtype)

    def to_residual_directions(self, v_FD: Tensor) -> Tensor:
        """Map directions (no mean shift), e.g. decoder rows, into residual space: (v · scale) @ Rᵀ."""
        if self.kind == "none":
            return v_FD
        v = v_FD * self.scale.to(v_FD.dtype)
        if self.kind == "pca":
            v = v @ self.rotation.t().to(v_FD.dtype)
        return v

    def encoder_to_residual(self, W_DN: Tensor) -> Tensor:
        """Fold the map into encoder rows: W z = W' (x − mean) with W' = (W / scale) @ Rᵀ."""
        if self.kind == "none":
            return W_DN
        W = W_DN / self.scale.to(W_DN.dtype)
        if self.kind == "pca":
            W = W @ self.rotation.t().to(W_DN.dtype)
        return W


class StepNormalizers(torch.nn.Module):
    """One :class:`Normalizer` per denoising step, for a dictionary trained across steps with
    ``step_normalization="per-step"``: each row is normalised by the statistics of its own step (residual
    norms and directions shift a lot between steps), along axes all steps share (:meth:`Normalizer.in_frame`).
    The dictionary's weights act on the per-step-normalised
    inputs, so there is no step-free map: :meth:`for_step` refuses ``step=None`` and so do the step-free
    methods of :class:`Normalizer` (``normalize`` ...), naming the steps to choose from.
    """

    def __init__(self, by_step: dict[int, Normalizer]):
        super().__init__()
        if not by_step:
            raise ValueError("per-step normalisation needs at least one step")
        kinds = {n.kind for n in by_step.values()}
        dims = {n.dim for n in by_step.values()}
        if len(kinds) != 1 or len(dims) != 1:
            raise ValueError(f"per-step normalisers must share kind and width, got kinds {kinds} and widths {dims}")
        self.kind, self.dim = kinds.pop(), dims.pop()
        self.steps = sorted(int(s) for s in by_step)
        self.by_step = torch.nn.ModuleDict({str(s): by_step[s] for s in self.steps})

    def for_step(self, step: int | None) -> Normalizer:
        if step is None or int(step) not in self.steps:
            given = "no step was given" if step is None else f"step {step} is not one of them"
            raise ValueError(f"this dictionary normalises each of its denoising steps {self.steps} on its own "
                             f"(step_normalization 'per-step') and {given}: pass step=... (e.g. "
                             f"dictionary.encode(acts, step={self.steps[0]})), or train with step_normalization='shared' "
                             f"for a dictionary usable at any step")
        return self.by_step[str(int(step))]

    def map_rows(self, method: str, x_BD: Tensor, steps_B: Tensor | None) -> Tensor:
        """Apply ``Normalizer.<method>`` (normalize or denormalize) to each row with its own step's statistics;
        ``steps_B`` (B,) the rows' denoising steps."""
        if steps_B is None:
            self.for_step(None)
        out = torch.empty_like(x_BD)
        steps_B = steps_B.to(x_BD.device)
        for step in steps_B.unique().tolist():
            rows = steps_B == step
            out[rows] = getattr(self.for_step(int(step)), method)(x_BD[rows])
        return out

    def row_scales(self, steps_B: Tensor) -> Tensor:
        """(B, D) each row's step's scale (the residual-space loss weights are its square)."""
        scales = torch.stack([self.for_step(s).scale for s in self.steps])
        steps_S, steps_B = torch.tensor(self.steps, device=scales.device), steps_B.to(scales.device)
        index = torch.searchsorted(steps_S, steps_B).clamp_max(len(self.steps) - 1)  # self.steps is sorted
        unknown = steps_S[index] != steps_B
        if bool(unknown.any()):
            self.for_step(int(steps_B[unknown][0]))  # refuses, naming the dictionary's steps
        return scales[index]

    # the step-free map does not exist: say which step to choose
    def normalize(self, x_BD: Tensor) -> Tensor:
        return self.for_step(None).normalize(x_BD)

    denormalize = to_residual_directions = encoder_to_residual = normalize


def normalize_rows(norm: "Normalizer | StepNormalizers", x_BD: Tensor, steps_B: Tensor | None = None) -> Tensor:
    """Rows into a dictionary's input space: by their own step under per-step normalisation, else one map."""
    return norm.map_rows("normalize", x_BD, steps_B) if isinstance(norm, StepNormalizers) else norm.normalize(x_BD)


def denormalize_rows(norm: "Normalizer | StepNormalizers", z_BD: Tensor, steps_B: Tensor | None = None) -> Tensor:
    """The inverse of :func:`normalize_rows`."""
    return norm.map_rows("denormalize", z_BD, steps_B) if isinstance(norm, StepNormalizers) else norm.denormalize(z_BD)


def loss_weights(norm: "Normalizer | StepNormalizers", steps_B: Tensor | None = None) -> Tensor:
    """Weights making an input-space squared error the residual-space one: scale² as (D,), or (B, D) by each
    row's step under per-step normalisation."""
    return (norm.row_scales(steps_B) if isinstance(norm, StepNormalizers) else norm.scale).pow(2)
