"""SAE families beyond TopK: BatchTopK, Matryoshka and JumpReLU, each a :class:`TopKSAE` subclass.

They share TopK's parametrisation (``e = σ(W_enc (z − b_dec) + b_enc)``, ``y = W_dec e + b_dec``, unit-norm
decoder rows), its normaliser, AuxK, sparse kernels and training loop; only the activation σ (and, for
Matryoshka, the loss) differs:

* **BatchTopK** (Bussmann, Leask & Nanda 2024): in training the top B·k scores of the whole batch are kept,
  so L0 varies per token (mean k). Inference cannot depend on the batch: a token keeps its scores above
  ``threshold``, a scalar estimated in training (running mean, then exponential average, of each batch's
  smallest kept activation: :meth:`BatchTopKSAE.observe`), saved with the weights.
* **Matryoshka** (Bussmann et al. 2025; Nabeshima 2024), on BatchTopK (default) or TopK: the loss sums the
  reconstruction errors of nested prefixes of the latents (``prefix_sizes``, e.g. F/16, F/4, F), so early
  latents learn general features on their own. :meth:`MatryoshkaSAE.prefix_level` says which prefix first
  holds a latent (0: the smallest).
* **JumpReLU** (Rajamanoharan et al. 2024, Gemma Scope): per-latent thresholds θ = exp(log_threshold),
  z = pre·H(pre − θ), trained with rectangle-kernel straight-through estimators (``bandwidth`` ε) and an L0
  target (``k``: see ``train.sae``), which all thresholds also track together after each step
  (:meth:`JumpReLUSAE.observe`).

Codes of a variable-L0 family are padded with zeros (index 0, value 0) up to the most active latents of
any token in the batch, so ``SparseCodes`` keep their (…, K) shape; K then varies between calls. Training never
pays for that padding: decode and backward touch the active pairs only (``packed_decode``), nnz·D per batch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .base import SparseCodes
from .normalization import Normalizer
from .sparse_ops import jumprelu_encode, packed_decode, prefix_decode, scores, threshold_codes, topk_encode
from .topk_sae import SAEConfig, SAEOutput, TopKSAE

HINT_FRACTION = 0.8
"""BatchTopK training pre-selects scores above this fraction of the running threshold (exact either way)"""


@dataclass
class BatchTopKConfig(SAEConfig):
    """A BatchTopK SAE: ``k`` is the mean active latents per token."""

    arch: ClassVar[str] = "batchtopk"


@dataclass
class MatryoshkaConfig(SAEConfig):
    """A Matryoshka SAE: nested prefixes of the latents, each trained to reconstruct on its own."""

    arch: ClassVar[str] = "matryoshka"

    prefixes: tuple[float, ...] = (0.0625, 0.25, 1.0)
    """Matryoshka prefix sizes as fractions of the latents, increasing, the last 1"""
    base: Literal["batchtopk", "topk"] = "batchtopk"
    """Matryoshka activation: batchtopk or topk"""

    def prefix_sizes(self) -> list[int]:
        """The prefix sizes in latents (needs ``num_latents`` resolved), strictly increasing, the last F."""
        n = self.num_latents
        sizes = [max(1, round(f * n)) for f in self.prefixes]
        if not self.prefixes or abs(self.prefixes[-1] - 1.0) > 1e-9 or any(f <= 0 for f in self.prefixes) \
                or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"prefixes must be increasing fractions in (0, 1] ending with 1 that give distinct "
                             f"sizes of {n} latents, got {list(self.prefixes)} -> {sizes}")
        return sizes

    def resolve(self, d_in: int) -> "MatryoshkaConfig":
        cfg = super().resolve(d_in)
        cfg.prefix_sizes()  # refuse bad prefixes now, not at the first step
        return cfg


@dataclass
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE: ``k`` is the target mean L0."""

    arch: ClassVar[str] = "jumprelu"

    bandwidth: float = 0.05
    """JumpReLU straight-through window width ε (normalised pre-activation units)"""
    init_threshold: float = 0.0
    """JumpReLU starting threshold of every latent (0: the first batch's B·k-th largest score, so L0 starts at k)"""
    l0_tracking: float = 0.05
    """JumpReLU: after each training step every log-threshold moves by this × log(batch L0 / k), so the mean L0
    reaches its target k (0: the L0 penalty alone, which stopped at L0 7 for 16 on the demo site)"""


def prefix_levels(sizes: list[int]) -> Tensor:
    """(sizes[-1],) the prefix level of every latent of a Matryoshka dictionary with prefix ``sizes``: the
    smallest prefix holding it (0 = the first, most general latents)."""
    return torch.bucketize(torch.arange(sizes[-1]), torch.tensor(sizes), right=True)


class BatchTopKSAE(TopKSAE):
    """BatchTopK in training, a fixed threshold at inference (see the module docstring). Its subclasses share
    the threshold inference (``_inference_threshold``: JumpReLU's is per latent; its scalar buffer stays 0)."""

    def __init__(self, d_in: int, cfg: SAEConfig, normalizer: Normalizer | None = None, seed: int = 0):
        super().__init__(d_in, cfg, normalizer, seed)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))

    @property
    def thresholded(self) -> bool:
        """Codes by threshold at inference (and, unless overridden, BatchTopK in training); Matryoshka on TopK: no."""
        return True

    def family_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold.reshape(1)}

    @torch.no_grad()
    def load_family_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.threshold.copy_(tensors["threshold"].reshape(()))

    def encode_train(self, z_BD: Tensor, dead_idx: Tensor | None, k_aux: int) -> tuple[Tensor, ...]:
        if not self.thresholded:
            return super().encode_train(z_BD, dead_idx, k_aux)
        # below the running threshold: a cheap, exact pre-selection (see batch_topk)
        hint = HINT_FRACTION * float(self.threshold) if self.threshold_batches > 0 else 0.0
        return topk_encode(z_BD, self.b_dec, self.W_enc, self.b_enc, self.k, dead_idx, k_aux, reuse_buffer=True,
                           batch=True, hint=hint)

    def forward_train(self, z_BD: Tensor, dead_idx: Tensor | None = None, k_aux: int = 0) -> SAEOutput:
        """As TopK's, but the codes (padded to the widest token, which may keep many times k) are decoded from
        their active pairs only (:func:`packed_decode`): decode and backward cost nnz·D, not B·K·D. Exact:
        a zero code adds nothing and its gradient is dropped by the encoder's ReLU mask anyway."""
        vals, idx, aux_vals, aux_idx = self.encode_train(z_BD, dead_idx, k_aux)
        return SAEOutput(packed_decode(vals, idx, self.W_dec, self.b_dec, vals > 0), vals, idx, aux_vals, aux_idx)

    @torch.no_grad()
    def observe(self, out: SAEOutput, rate: float) -> None:
        """Fold one training batch's smallest kept activation into ``threshold``: a running mean for the first
        1/rate batches, then an exponential average with weight ``rate`` (training moves the scores)."""
        if not self.thresholded:
            return
        kept = out.values_BK[out.values_BK > 0]
        smallest = (kept.min() if kept.numel() else torch.tensor(float("inf"), device=kept.device)).to(self.threshold)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank joins
            torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        if not torch.isfinite(smallest):
            return
        self.threshold_batches += 1
        weight = max(rate, 1.0 / float(self.threshold_batches))
        self.threshold.lerp_(smallest, weight)

    def _inference_threshold(self) -> Tensor:
        return self.threshold

    def calibrate(self, z_BD: Tensor) -> None:
        """At the end of training, set the inference threshold to this batch's B·k-th score (:meth:`match_l0`), so
        inference keeps k latents a token on average: the running mean of training lags while training still moves
        the scores (on the demo site it left held-out L0 at 12.4 for k 16). Every rank sees the same whole batch,
        so ranks agree."""
        self.match_l0(z_BD)

    @torch.no_grad()
    def match_l0(self, z_BD: Tensor) -> None:
        """Every inference threshold at the batch's B·k-th score: codes of ``z_BD`` keep k latents a token on
        average (BatchTopK's end of training, JumpReLU's start, a family's untrained control)."""
        if self.thresholded:
            self._set_thresholds(float(self.batch_kth_score(z_BD)))

    def _set_thresholds(self, value: float) -> None:
        self.threshold.fill_(max(value, 0.0))

    def batch_kth_score(self, z_BD: Tensor) -> Tensor:
        """The batch's B·k-th largest score: a threshold that keeps k latents a token on average."""
        pre = scores(z_BD, self.b_dec, self.W_enc, self.b_enc).reshape(-1)
        return pre.topk(min(pre.numel(), z_BD.shape[0] * self.k), sorted=False).values.min()

    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        if not self.thresholded:
            return super().encode_normalized(z_BD)
        vals, idx = threshold_codes(scores(z_BD, self.b_dec, self.W_enc, self.b_enc), self._inference_threshold())
        return SparseCodes(vals, idx)

    @torch.no_grad()
    def latent_activation(self, acts: Tensor, latent: int, step: int | None = None) -> Tensor:
        if not self.thresholded:
            return super().latent_activation(acts, latent, step)
        z_BD = self._flat_normalized(acts, step)
        pre_B = (z_BD - self.b_dec) @ self.W_enc[latent] + self.b_enc[latent]
        theta = self._inference_threshold()
        theta = theta[latent] if theta.ndim else theta
        return (pre_B * ((pre_B > theta) & (pre_B > 0))).reshape(acts.shape[:-1])


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka prefixes on BatchTopK or TopK codes (``cfg.base``)."""

    cfg: MatryoshkaConfig

    @property
    def thresholded(self) -> bool:
        return self.cfg.base == "batchtopk"

    @property
    def prefix_sizes(self) -> list[int]:
        return self.cfg.prefix_sizes()

    def prefix_level(self, latent: int) -> int:
        """The smallest prefix holding ``latent`` (0 = the first, most general latents)."""
        if not 0 <= latent < self.num_latents:
            raise IndexError(f"latent {latent} is not in 0..{self.num_latents - 1}")
        return bisect.bisect_right(self.prefix_sizes, latent)

    def prefix_levels(self) -> Tensor:
        """(F,) every latent's prefix level."""
        return prefix_levels(self.prefix_sizes)

    def forward_train(self, z_BD: Tensor, dead_idx: Tensor | None = None, k_aux: int = 0) -> SAEOutput:
        """Every prefix's reconstruction from one bag decode of the codes' active pairs (see :func:`prefix_decode`
        and :meth:`BatchTopKSAE.forward_train`): all prefixes cost about one decode, never the padding."""
        vals, idx, aux_vals, aux_idx = self.encode_train(z_BD, dead_idx, k_aux)
        recons = prefix_decode(vals, idx, self.W_dec, self.prefix_sizes, self.b_dec, vals > 0)
        return SAEOutput(recons[-1], vals, idx, aux_vals, aux_idx, prefix_recons_BD=recons[:-1])


class JumpReLUSAE(BatchTopKSAE):
    """Per-latent learned thresholds θ = exp(log_threshold) (see the module docstring)."""

    cfg: JumpReLUConfig

    def __init__(self, d_in: int, cfg: SAEConfig, normalizer: Normalizer | None = None, seed: int = 0):
        super().__init__(d_in, cfg, normalizer, seed)
        self.log_threshold = nn.Parameter(torch.full((self.num_latents,), float(torch.tensor(
            self.cfg.init_threshold if self.cfg.init_threshold > 0 else 1e-3).log())))

    def family_tensors(self) -> dict[str, Tensor]:
        return {"log_threshold": self.log_threshold}

    @torch.no_grad()
    def load_family_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.log_threshold.copy_(tensors["log_threshold"])

    @property
    def thresholds(self) -> Tensor:
        """(F,) the thresholds θ."""
        return self.log_threshold.exp()

    def _inference_threshold(self) -> Tensor:
        return self.thresholds.detach()

    def calibrate(self, z_BD: Tensor) -> None:
        """JumpReLU's thresholds are learned per latent (its L0 penalty sets them): nothing to calibrate."""

    def _set_thresholds(self, value: float) -> None:
        self.log_threshold.fill_(math.log(max(value, 1e-3)))

    @torch.no_grad()
    def initialise(self, z_BD: Tensor) -> None:
        super().initialise(z_BD)
        if self.cfg.init_threshold <= 0:  # start at L0 = k: the B·k-th largest score of the first batch
            self.match_l0(z_BD)

    def forward_train(self, z_BD: Tensor, dead_idx: Tensor | None = None, k_aux: int = 0) -> SAEOutput:
        vals, idx, l0, aux_vals, aux_idx, pairs = jumprelu_encode(z_BD, self.b_dec, self.W_enc, self.b_enc,
                                                                  self.thresholds, self.cfg.bandwidth, dead_idx, k_aux,
                                                                  reuse_buffer=True)
        # decoded from its pairs only (window pairs too: their θ needs the loss gradient), see BatchTopK's
        return SAEOutput(packed_decode(vals, idx, self.W_dec, self.b_dec, pairs), vals, idx, aux_vals, aux_idx, l0=l0)

    @torch.no_grad()
    def observe(self, out: SAEOutput, rate: float) -> None:
        """After each step, move every log-threshold by ``l0_tracking`` × log(batch L0 / k), so the mean L0
        follows its target while the encoder's scores move. The L0 penalty alone could not: Adam moves a
        log-threshold by about lr a step whatever the penalty's weight, about e^±0.4 over the demo's 366 steps,
        while the encoder's scores shrank faster (L0 stopped at 7.2 for 16; docs/results.md). ``rate``: unused."""
        gain = self.cfg.l0_tracking
        if gain <= 0 or out.l0 is None:
            return
        counts = torch.stack([out.l0.detach().float(), torch.tensor(float(out.values_BK.shape[0]), device=out.l0.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # ranks move alike
            torch.distributed.all_reduce(counts)
        mean_l0 = (counts[0] / counts[1]).clamp_min(0.1)  # no active latent: still a finite, strong pull down
        self.log_threshold.add_(gain * torch.log(mean_l0 / self.k))


SAE_CLASSES: dict[str, tuple[type[SAEConfig], type[TopKSAE]]] = {
    "topk": (SAEConfig, TopKSAE),
    "batchtopk": (BatchTopKConfig, BatchTopKSAE),
    "matryoshka": (MatryoshkaConfig, MatryoshkaSAE),
    "jumprelu": (JumpReLUConfig, JumpReLUSAE),
}
"""arch name -> (architecture config, model class)"""


def make_sae(d_in: int, cfg: SAEConfig, normalizer: Normalizer | None = None, seed: int = 0) -> TopKSAE:
    """The SAE of ``cfg``'s family."""
    return SAE_CLASSES[cfg.arch][1](d_in, cfg, normalizer=normalizer, seed=seed)
