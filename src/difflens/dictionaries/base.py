"""The one API every dictionary (TopK SAE, ITDA, MLP neurons) implements.

Users work in *residual space* (the captured activations). Each dictionary owns a
:class:`~difflens.dictionaries.normalization.Normalizer`; ``encode`` normalises first and
``decode`` maps back, so reconstructions are always in residual space and SAE vs ITDA vs
neurons are compared through exactly the same code path.

A dictionary trained across denoising steps with per-step normalisation holds one normaliser per step
(:class:`~difflens.dictionaries.normalization.StepNormalizers`): the residual-space methods then take the rows'
``step`` (``encode(acts, step=3)``) and refuse without it, naming the steps; with one normaliser (a one-step
dictionary, or ``step_normalization="shared"``) ``step`` is accepted and not needed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from .normalization import Normalizer, StepNormalizers


@dataclass
class SparseCodes:
    """Codes of tokens as (values_BK, indices_BK), or (..., K) with the activations' leading dims; zero values
    are inactive slots."""

    values: Tensor
    indices: Tensor

    def l0(self) -> Tensor:
        """Active latents per token, shape (...,)."""
        return (self.values != 0).sum(-1)

    def to_dense(self, num_latents: int) -> Tensor:
        """(..., D) dense codes: only for small inspections, never in training loops."""
        out = self.values.new_zeros(*self.values.shape[:-1], num_latents)
        return out.scatter_add_(-1, self.indices, self.values)

    def flat(self) -> "SparseCodes":
        """The same codes as (tokens, K)."""
        return SparseCodes(self.values.reshape(-1, self.values.shape[-1]), self.indices.reshape(-1, self.indices.shape[-1]))

    @staticmethod
    def cat(parts: "list[SparseCodes]") -> "SparseCodes":
        """Codes of several calls as one (tokens, K). Families whose L0 varies per token (BatchTopK, JumpReLU) pad
        each call to its own widest row, so narrower parts gain inactive slots (value 0, index 0)."""
        width = max(p.values.shape[-1] for p in parts)
        pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[-1]))  # noqa: E731
        return SparseCodes(torch.cat([pad(p.values) for p in parts]), torch.cat([pad(p.indices) for p in parts]))


def check_activations(acts_BD: Tensor, dim: int, what: str = "activations") -> None:
    """Raise a clear ValueError for a width mismatch or non-finite values."""
    if acts_BD.ndim != 2:
        raise ValueError(f"{what} must be a (tokens, width) matrix, got shape {tuple(acts_BD.shape)}")
    if acts_BD.shape[1] != dim:
        raise ValueError(f"{what} have width {acts_BD.shape[1]} but the dictionary expects width {dim}")
    if not torch.isfinite(acts_BD).all():
        bad = int((~torch.isfinite(acts_BD)).any(1).sum())
        raise ValueError(f"{what} contain NaN or inf values in {bad} of {acts_BD.shape[0]} rows")


class Dictionary(torch.nn.Module):
    """Base class: subclasses implement ``encode_normalized`` / ``decode_normalized``.

    ``meta`` remembers where the dictionary came from (``site``, ``step``, ``store``: the store's path,
    prompts hash and weights fingerprint, ``split``) and how it was trained; it is saved in cfg.json.
    """

    kind: str = "dictionary"

    def __init__(self, d_in: int, normalizer: Normalizer | StepNormalizers | None = None):
        super().__init__()
        self.meta: dict = {}
        self.path = None  # the folder it was loaded from
        self.d_in = d_in
        self.normalizer = normalizer if normalizer is not None else Normalizer(d_in, "none")
        if self.normalizer.dim != d_in:
            raise ValueError(f"normaliser width {self.normalizer.dim} does not match dictionary width {d_in}")

    @property
    def num_latents(self) -> int:
        raise NotImplementedError

    # ---- normalised space (implemented by subclasses) ----
    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        raise NotImplementedError

    def decode_normalized(self, codes: SparseCodes) -> Tensor:
        raise NotImplementedError

    def decoder_rows(self) -> Tensor:
        """(F, D) decoder directions in the normalised space."""
        raise NotImplementedError

    # ---- where it came from ----
    @property
    def site(self) -> str | None:
        return self.meta.get("site")

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    @property
    def steps(self) -> list[int] | None:
        """The denoising steps it was trained on: meta ``denoising_steps`` for one across steps, else [step]."""
        steps = self.meta.get("denoising_steps")
        return list(steps) if steps else ([self.step] if self.step is not None else None)

    def check_steps(self, steps, doing: str = "used") -> None:
        """Refuse ``steps`` this dictionary has no normaliser for (ValueError naming both), before any work: with
        one normaliser per step, rows of step s are encoded with step s's and there is none for another step."""
        if isinstance(self.normalizer, StepNormalizers):
            missing = sorted(set(int(s) for s in steps) - set(self.normalizer.steps))
            if missing:
                raise ValueError(f"this dictionary normalises each of its denoising steps {self.normalizer.steps} on "
                                 f"its own (step_normalization 'per-step'), so it can be {doing} at those steps only, "
                                 f"not at {missing}: choose steps among them, or train with step_normalization="
                                 f"'shared' for a dictionary usable at any step")

    def normalizer_for(self, step: int | None = None) -> Normalizer:
        """The map into the dictionary's input space for rows of ``step`` (see the module docstring)."""
        if isinstance(self.normalizer, StepNormalizers):
            return self.normalizer.for_step(step)
        return self.normalizer

    def at_step(self, step: int | None) -> "Dictionary":
        """The dictionary as rows of one denoising ``step`` see it: itself, or (one normaliser per step) a view
        sharing its weights and meta whose normaliser is that step's, so step-free code (reports, controls that
        copy the normaliser) reads it as a one-step dictionary."""
        if not isinstance(self.normalizer, StepNormalizers):
            return self
        view = copy.copy(self)
        view._modules = dict(self._modules)  # the view's own module table: the original keeps its normalisers
        view.normalizer = self.normalizer_for(step)
        return view

    @property
    def store(self) -> dict | None:
        """The training store's identity: {"path" (absolute, a hint), "relative" (to the dictionary's folder, when
        saved), "model", "weights", "prompts_hash", "n_images"} (None: not a store); its folder: `locate_store`."""
        store = self.meta.get("store")
        return {"path": store} if isinstance(store, str) else store

    def locate_store(self) -> str:
        """Where the training store is now: recorded relative to the dictionary's folder (tried first: the run
        moved as a whole), else at the recorded absolute path; what is found must be the recorded capture
        (ValueError names the differences; FileNotFoundError the places tried). The found path becomes the hint."""
        from difflens.store.run_layout import find_store

        found = str(find_store(self.path, self.store, f"the store of dictionary {self.path or '(in memory)'}"))
        if isinstance(self.meta.get("store"), dict):
            self.meta["store"] = {**self.meta["store"], "path": found}
        return found

    # ---- residual space (shared; inspection only: no autograd history) ----
    @torch.no_grad()
    def encode(self, acts: Tensor, step: int | None = None) -> SparseCodes:
        """Residual-space activations (..., N) of denoising ``step`` -> codes with values/indices (..., K)."""
        lead = acts.shape[:-1]
        codes = self.encode_normalized(self._flat_normalized(acts, step))
        return SparseCodes(codes.values.reshape(*lead, -1), codes.indices.reshape(*lead, -1))

    @torch.no_grad()
    def latent_activation(self, acts: Tensor, latent: int, step: int | None = None) -> Tensor:
        """(...,) the activation ``encode`` gives one latent on residual-space ``acts`` (..., N); 0 where inactive.
        Steering reads it at every hooked step, so subclasses may compute it without a full encode."""
        codes = self.encode(acts, step)
        return (codes.values * (codes.indices == latent)).sum(-1)

    def _flat_normalized(self, acts: Tensor, step: int | None = None) -> Tensor:
        """Checked, normalised (tokens, N) view of residual-space ``acts`` (..., N)."""
        if acts.ndim == 0 or acts.shape[-1] != self.d_in:
            raise ValueError(f"activations have shape {tuple(acts.shape)}: width {acts.shape[-1] if acts.ndim else None} but the dictionary expects width {self.d_in}")
        flat = acts.reshape(-1, self.d_in).float()
        check_activations(flat, self.d_in)
        return self.normalizer_for(step).normalize(flat)

    @torch.no_grad()
    def decode(self, codes: SparseCodes, step: int | None = None) -> Tensor:
        """Codes (..., K) -> residual-space reconstruction (..., N) at denoising ``step``."""
        lead = codes.values.shape[:-1]
        return self.normalizer_for(step).denormalize(self.decode_normalized(codes.flat())).reshape(*lead, self.d_in)

    @torch.no_grad()
    def reconstruct(self, acts: Tensor, step: int | None = None) -> tuple[Tensor, SparseCodes]:
        """(reconstruction (..., N), codes (..., K)) of residual-space activations."""
        codes = self.encode(acts, step)
        return self.decode(codes, step), codes

    @torch.no_grad()
    def residual_directions(self, latents: Tensor | list[int] | None = None, step: int | None = None) -> Tensor:
        """Each latent's residual-space decoder row at its native norm, shape (F, D): latent f at activation a
        adds a * row f to the reconstruction (what steering edits and the editing benchmark transfers)."""
        rows = self.decoder_rows()
        if latents is not None:
            rows = rows[torch.as_tensor(latents, dtype=torch.long, device=rows.device)]
        return self.normalizer_for(step).to_residual_directions(rows.float())

    @torch.no_grad()
    def feature_directions(self, latents: Tensor | list[int] | None = None, step: int | None = None) -> Tensor:
        """Unit-norm residual-space direction of each latent, shape (F, D)."""
        v = self.residual_directions(latents, step)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
