"""Dictionaries over diffusion-model activations: TopK SAEs (and the BatchTopK, Matryoshka and JumpReLU
families), ITDA and the MLP-neuron baseline.

All share :class:`~difflens.dictionaries.base.Dictionary` (``encode`` → sparse codes,
``decode`` → residual-space reconstruction, ``num_latents``, ``feature_directions``).
"""

from .base import Dictionary, SparseCodes, check_activations
from .io import export_folded, load_dictionary, save_dictionary
from .itda import ITDA, ITDAConfig, gradient_pursuit
from .neurons import NeuronBasis
from .normalization import Normalizer
from .sae_families import (BatchTopKConfig, BatchTopKSAE, JumpReLUConfig, JumpReLUSAE, MatryoshkaConfig,
                           MatryoshkaSAE, make_sae)
from .topk_sae import SAEConfig, TopKSAE

__all__ = [
    "Dictionary",
    "SparseCodes",
    "check_activations",
    "TopKSAE",
    "SAEConfig",
    "BatchTopKSAE",
    "BatchTopKConfig",
    "MatryoshkaSAE",
    "MatryoshkaConfig",
    "JumpReLUSAE",
    "JumpReLUConfig",
    "make_sae",
    "ITDA",
    "ITDAConfig",
    "gradient_pursuit",
    "NeuronBasis",
    "Normalizer",
    "save_dictionary",
    "load_dictionary",
    "export_folded",
]
