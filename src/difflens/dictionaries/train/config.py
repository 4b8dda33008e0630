"""Training configs: one dataclass per method plus what every run shares. The CLI's flags are built from them.

SAE defaults follow the FLUX paper (seed 002): Adam β = (0, 0.99), constant lr after a 50-step linear warm-up,
gradient-norm clip 10, AuxK with k_aux 64 and coefficient 1/32, PCA whitening. The paper's lr 2e-4 was chosen
for 2**14..2**16 latents; when none is given the lr scales with the dictionary as sparsify's does,
2e-4 / √(num_latents / 2**14) (:func:`default_lr`), so small dictionaries train as well as hand-tuned ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar, Literal

from ..itda import ITDAConfig
from ..topk_sae import SAEConfig

Normalization = Literal["none", "standardise", "pca"]

REFERENCE_LR, REFERENCE_LATENTS = 2e-4, 2**14


def default_lr(num_latents: int) -> float:
    """sparsify's size-scaled default: 2e-4 / √(num_latents / 2**14) (≈ 9e-4 at 768 latents, 2e-4 at 16,384)."""
    return REFERENCE_LR / math.sqrt(num_latents / REFERENCE_LATENTS)


@dataclass
class SAETrainConfig:
    """A TopK SAE: its architecture and how it is optimised (other families: ``family_configs``)."""

    ARCH_CONFIG: ClassVar[type[SAEConfig]] = SAEConfig

    num_latents: int = 0
    """SAE latents (0: expansion_factor × width)"""
    expansion_factor: int = 16
    """latents per input dimension when num_latents is 0"""
    k: int = 64
    """active latents per token"""
    normalization: Normalization = "pca"
    """input normalisation fitted on the training data: none, standardise or pca (whitening)"""
    loss_space: Literal["input", "residual"] = "input"
    """where the reconstruction loss is measured: input (the normalised space the SAE sees) or residual
    (the captured activations' space, what FVU reports; the encoder still sees normalised inputs)"""
    lr: float | None = None
    """Adam learning rate (constant after warm-up); none: 2e-4 / sqrt(num_latents / 16384) as sparsify
    (about 9e-4 at 768 latents, 2e-4 at 16384), the value used is recorded with the dictionary"""
    betas: tuple[float, float] = (0.0, 0.99)
    """Adam betas"""
    warmup_steps: int = 50
    """linear learning-rate warm-up steps"""
    grad_clip: float = 10.0
    """gradient-norm clip"""
    batch_size: int = 4096
    """tokens per optimiser step (the global batch under torchrun)"""
    num_tokens: int = field(default=10_000_000, metadata={"aliases": ["--tokens"]})
    """training tokens (epochs repeat when the data is smaller)"""
    k_aux: int = 64
    """AuxK latents for reviving dead latents (0 disables AuxK)"""
    auxk_coef: float = 1 / 32
    """weight of the AuxK loss"""
    dead_window_tokens: int = 1_000_000
    """tokens without firing before a latent counts as dead"""
    seed: int = 0
    """initialisation and data-order seed"""
    autocast: bool = True
    """bf16 autocast on CUDA"""

    def architecture(self, d_in: int) -> SAEConfig:
        names = {f.name for f in fields(self.ARCH_CONFIG)}
        return self.ARCH_CONFIG(**{k: v for k, v in asdict(self).items() if k in names}).resolve(d_in)

    def resolved(self, d_in: int) -> "SAETrainConfig":
        """This config with ``lr`` filled in (the size-scaled default when none was given): what a run records."""
        return self if self.lr is not None else replace(self, lr=default_lr(self.architecture(d_in).num_latents))

    def validate(self) -> None:
        positive = {"batch_size": self.batch_size, "num_tokens": self.num_tokens, "lr": 1 if self.lr is None else self.lr,
                    "dead_window_tokens": self.dead_window_tokens}
        bad = [f"{k}={v}" for k, v in positive.items() if not v > 0]
        bad += [f"{k}={v}" for k, v in {"k_aux": self.k_aux, "warmup_steps": self.warmup_steps,
                                        "num_latents": self.num_latents, "auxk_coef": self.auxk_coef}.items() if v < 0]
        if bad:
            raise ValueError(f"invalid SAE training settings: {', '.join(bad)}")


@dataclass
class ITDATrainConfig(ITDAConfig):
    """An ITDA dictionary (atoms chosen from the data, codes by gradient pursuit) and its one pass over the data."""

    batch_size: int = 4096
    """tokens per batch"""
    num_tokens: int = field(default=1_000_000, metadata={"aliases": ["--tokens"]})
    """tokens to stream (epochs repeat when the data is smaller)"""
    seed: int = 0
    """data-order seed"""

    def architecture(self) -> ITDAConfig:
        return ITDAConfig(**ITDAConfig.to_dict(self))

    def validate(self) -> None:
        bad = [f"{k}={v}" for k, v in {"k": self.k, "batch_size": self.batch_size, "num_tokens": self.num_tokens,
                                        "max_atoms": self.max_atoms}.items() if not v > 0]
        if bad:
            raise ValueError(f"invalid ITDA settings: {', '.join(bad)}")


@dataclass
class RunConfig:
    """What every training run shares: where it writes, normalisation fit, checkpoints, logging."""

    out: str | None = None
    """dictionary folder (cfg.json, weights, checkpoint/, train_log.jsonl); none: train in memory, write nothing"""
    resume: bool = True
    """continue from the folder's checkpoint, or load its finished dictionary, when they were made by the same
    settings and data (other ones are refused, differences named); --no-resume: start over, replacing them"""
    overwrite: bool = False
    """replace a finished dictionary or checkpoint made by other settings or data (said on stderr) instead of
    refusing; one made by the same job is still reused"""
    norm_fit_tokens: int = 1_000_000
    """tokens streamed into the normalisation fit"""
    min_tokens_per_dim: float = 10.0
    """refuse normalisation fits on fewer than this many tokens per input dimension"""
    step_normalization: Literal["shared", "per-step"] = "shared"
    """for a dictionary across several steps (--step 0,3,7 or all): one normaliser fitted on all its steps
    (shared: usable at any step), or one per step applied to each row by its step (per-step: each step's mean and
    scales along the shared fit's axes; encode/decode then need the step)"""
    checkpoint_every: int = 200
    """steps between checkpoints (0: never)"""
    log_every: int = 10
    """steps between train_log.jsonl lines"""
    device: str = "auto"
    """cpu, cuda, cuda:1, or auto (this rank's GPU when there is one)"""
    logger: Literal["none", "wandb", "tensorboard"] = "none"
    """also log to wandb or tensorboard (when installed)"""
    progress: bool = True
    """show a progress bar"""


# Settings that may change between a checkpoint and its resume without changing the job's result.
def sae_recipe(k: int, num_latents: int, num_tokens: int) -> dict:
    """The fixed `train_sae` settings of the demo and of every ground-truth study, so their dictionaries compare:
    batch 4096, Adam lr 1e-3, AuxK with k_aux = 2k, a dead window of a quarter of the tokens (at most 500k), the
    normaliser fitted on the whole train split."""
    return dict(k=k, num_latents=num_latents, num_tokens=num_tokens, batch_size=4096, lr=1e-3, k_aux=2 * k,
                dead_window_tokens=min(num_tokens // 4, 500_000), norm_fit_tokens=10**9)


OPERATIONAL = {"out", "resume", "overwrite", "checkpoint_every", "log_every", "device", "logger", "progress", "num_tokens"}


# Settings that only mean something for a dictionary across steps: bound to the job with its data (job.py).
STEP_SETTINGS = {"step_normalization"}


def job_settings(method: str, cfg: SAETrainConfig | ITDATrainConfig, run: RunConfig) -> dict:
    """The settings a checkpoint is bound to (a resume must match them): method, config, normalisation fit."""
    settings = {"method": method, **asdict(cfg), **asdict(run)}
    if getattr(cfg, "ARCH_CONFIG", SAEConfig).arch != "topk":  # TopK jobs keep their recorded settings
        settings["arch"] = cfg.ARCH_CONFIG.arch
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
            if k not in OPERATIONAL | STEP_SETTINGS}
