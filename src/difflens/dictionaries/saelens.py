"""Export a difflens TopK SAE in sae-lens's on-disk format (``SAE.load_from_disk``).

The folder holds ``cfg.json`` and ``sae_weights.safetensors`` with exactly ``W_enc [D, F]``,
``b_enc [F]``, ``W_dec [F, D]``, ``b_dec [D]`` (sae-lens loads the state dict strictly). sae-lens
computes, for a ``"topk"`` architecture with ``apply_b_dec_to_input`` and no rescaling::

    e = ReLU(TopK((x − b_dec) @ W_enc + b_enc)),   y = e @ W_dec + b_dec

Taking the top k before or after the ReLU gives the same dense codes, so this is difflens'
encoder once the input normalisation is folded into the weights (see :func:`fold_normalizer`):
the exported SAE acts on raw residual-space activations and reproduces ``sae.reconstruct``.

Folded decoder rows are not unit norm. sae-lens only rescales by decoder norms when
``rescale_acts_by_decoder_norm`` is true (written false here) or when asked to fold them on load
(``fold_W_dec_norm=True``, which sae-lens refuses for such TopK SAEs), so the weights load as is.

Other families (``sae_families``) export as sae-lens saves them for inference: BatchTopK and Matryoshka on
BatchTopK become ``"jumprelu"`` with every latent's ``threshold`` the learned batch threshold (what sae-lens'
own ``BatchTopKTrainingSAE`` writes; its ``batchtopk`` and ``matryoshka_batchtopk`` are training-only
architectures), JumpReLU becomes ``"jumprelu"`` with its thresholds, Matryoshka on TopK ``"topk"``. sae-lens
computes ``ReLU(pre) · (pre > threshold)`` with pre = (x − b_dec) @ W_enc + b_enc; folding the normaliser
leaves pre unchanged, so thresholds carry over as they are. ``metadata`` records ``difflens_arch`` and,
for Matryoshka, ``matryoshka_widths`` (the prefix sizes).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_save_tensors, atomic_write_json
from .io import fold_normalizer
from .sae_families import BatchTopKSAE, MatryoshkaSAE
from .topk_sae import TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# sae-lens treats configs without metadata.sae_lens_version (or older than 6.0) as legacy and
# rewrites them; this is the release the layout was checked against.
SAELENS_FORMAT_VERSION = "6.54.12"


def saelens_cfg(sae: TopKSAE, *, hook_name: str | None = None, metadata: dict | None = None) -> dict:
    """The ``cfg.json`` sae-lens expects for ``sae`` (float32, cpu, no runtime normalisation)."""
    meta = {
        "sae_lens_training_version": None,  # trained by difflens, not sae-lens
        "difflens_folded_normalization": sae.normalizer.kind,
        "difflens_arch": sae.cfg.arch,
        **({"matryoshka_widths": sae.prefix_sizes} if isinstance(sae, MatryoshkaSAE) else {}),
        **(metadata or {}),
        "sae_lens_version": SAELENS_FORMAT_VERSION,  # last: an older value would make sae-lens rewrite the cfg
    }
    if hook_name is not None:
        meta["hook_name"] = hook_name
    threshold = _thresholds(sae) is not None
    return {
        "architecture": "jumprelu" if threshold else "topk",
        "d_in": sae.d_in,
        "d_sae": sae.num_latents,
        **({} if threshold else {"k": sae.k}),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": meta,
    }


def export_saelens(sae: TopKSAE, out_dir: str | Path, *, hook_name: str | None = None,
                   metadata: dict | None = None) -> Path:
    """Write ``sae`` into ``out_dir`` for ``sae_lens.SAE.load_from_disk``, normalisation folded in.

    ``hook_name`` and ``metadata`` (JSON-serialisable) land in cfg.json's ``metadata``. Only SAEs (TopK and
    its families) can be exported; other dictionaries raise ``ValueError``.
    """
    if not isinstance(sae, TopKSAE):
        raise ValueError(
            f"sae-lens export needs a TopK SAE, got {type(sae).__name__} (kind {getattr(sae, 'kind', '?')!r}); "
            "ITDA and neuron bases have no sae-lens equivalent"
        )
    out_dir = Path(out_dir)
    cfg = saelens_cfg(sae, hook_name=hook_name, metadata=metadata)
    folded = fold_normalizer(sae)
    tensors = {
        "W_enc": folded["W_enc"].t(),  # sae-lens multiplies x @ W_enc: [d_in, d_sae]
        "b_enc": folded["b_enc"],
        "W_dec": folded["W_dec"],
        "b_dec": folded["b_dec"],
    }
    threshold_F = _thresholds(sae)
    if threshold_F is not None:
        tensors["threshold"] = threshold_F
    tensors = {name: t.to(torch.float32).contiguous() for name, t in tensors.items()}
    # Weights first: a cfg.json beside them marks a complete export.
    atomic_save_tensors(out_dir / WEIGHTS_FILE, tensors)
    atomic_write_json(out_dir / CFG_FILE, cfg)
    return out_dir


def _thresholds(sae: TopKSAE) -> torch.Tensor | None:
    """(F,) the inference thresholds of a threshold family, None for TopK codes."""
    if not isinstance(sae, BatchTopKSAE) or not sae.thresholded:
        return None
    return torch.broadcast_to(sae._inference_threshold().detach().float().cpu(), (sae.num_latents,)).clone()
