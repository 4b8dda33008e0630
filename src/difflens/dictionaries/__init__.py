"""Dictionaries over diffusion-model activations: TopK SAEs, ITDA and the MLP-neuron baseline.

All share :class:`~difflens.dictionaries.base.Dictionary` (``encode`` → sparse codes,
``decode`` → residual-space reconstruction, ``num_latents``, ``feature_directions``).
"""

from .base import Dictionary, SparseCodes, check_activations
from .io import export_folded, load_dictionary, save_dictionary
from .itda import ITDA, ITDAConfig, gradient_pursuit
from .neurons import NeuronBasis
from .normalization import Normalizer
from .topk_sae import SAEConfig, TopKSAE

__all__ = [
    "Dictionary",
    "SparseCodes",
    "check_activations",
    "TopKSAE",
    "SAEConfig",
    "ITDA",
    "ITDAConfig",
    "gradient_pursuit",
    "NeuronBasis",
    "Normalizer",
    "save_dictionary",
    "load_dictionary",
    "export_folded",
]
