"""Training configs of the SAE families beyond TopK: one dataclass per family, each a :class:`SAETrainConfig`
(so every shared setting keeps its flag and default) plus the family's own settings.

The architecture fields (``MatryoshkaConfig.prefixes``, ``JumpReLUConfig.bandwidth`` ...) are declared once,
on the architecture config, and the training config inherits them (``ARCH_CONFIG``); ``architecture()``
builds the family's config from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..sae_families import BatchTopKConfig, JumpReLUConfig, MatryoshkaConfig
from .config import SAETrainConfig


@dataclass
class _ThresholdEstimate:
    threshold_rate: float = 0.01
    """BatchTopK (and Matryoshka on it) inference threshold: weight of each batch's smallest kept activation in
    its running estimate"""


@dataclass
class BatchTopKTrainConfig(SAETrainConfig, _ThresholdEstimate):
    """A BatchTopK SAE (``k``: mean active latents per token over a batch)."""

    ARCH_CONFIG: ClassVar = BatchTopKConfig


@dataclass
class MatryoshkaTrainConfig(SAETrainConfig, MatryoshkaConfig, _ThresholdEstimate):
    """A Matryoshka SAE: the loss sums the FVU of each prefix (``prefixes``) of the latents."""

    ARCH_CONFIG: ClassVar = MatryoshkaConfig


@dataclass
class JumpReLUTrainConfig(SAETrainConfig, JumpReLUConfig):
    """A JumpReLU SAE: ``k`` is the target mean L0, pulled by ``l0_coef`` × (L0 / k − 1)² per latent and tracked by
    all thresholds together (``l0_tracking``)."""

    ARCH_CONFIG: ClassVar = JumpReLUConfig

    l0_coef: float = 1.0
    """JumpReLU: weight of the L0-target penalty (L0 / k − 1)²"""


SAE_TRAIN_CONFIGS: dict[str, type[SAETrainConfig]] = {
    "topk": SAETrainConfig,
    "batchtopk": BatchTopKTrainConfig,
    "matryoshka": MatryoshkaTrainConfig,
    "jumprelu": JumpReLUTrainConfig,
}
"""--arch name -> training config"""


def sae_train_config(arch: str) -> type[SAETrainConfig]:
    if arch not in SAE_TRAIN_CONFIGS:
        raise ValueError(f"unknown SAE arch {arch!r}; choose one of {', '.join(SAE_TRAIN_CONFIGS)}")
    return SAE_TRAIN_CONFIGS[arch]
