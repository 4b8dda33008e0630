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
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_save_tensors, atomic_write_json
from .io import fold_normalizer
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
        **(metadata or {}),
        "sae_lens_version": SAELENS_FORMAT_VERSION,  # last: an older value would make sae-lens rewrite the cfg
    }
    if hook_name is not None:
        meta["hook_name"] = hook_name
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.num_latents,
        "k": sae.k,
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

    ``hook_name`` and ``metadata`` (JSON-serialisable) land in cfg.json's ``metadata``. Only TopK SAEs
    can be exported; other dictionaries raise ``ValueError``.
    """
    if not isinstance(sae, TopKSAE):
        raise ValueError(
            f"sae-lens export needs a TopK SAE, got {type(sae).__name__} (kind {getattr(sae, 'kind', '?')!r}); "
            "ITDA and neuron bases have no sae-lens equivalent"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = saelens_cfg(sae, hook_name=hook_name, metadata=metadata)
    folded = fold_normalizer(sae)
    tensors = {
        "W_enc": folded["W_enc"].t(),  # sae-lens multiplies x @ W_enc: [d_in, d_sae]
        "b_enc": folded["b_enc"],
        "W_dec": folded["W_dec"],
        "b_dec": folded["b_dec"],
    }
    tensors = {name: t.to(torch.float32).contiguous() for name, t in tensors.items()}
    # Weights first: a cfg.json beside them marks a complete export.
    atomic_save_tensors(out_dir / WEIGHTS_FILE, tensors)
    atomic_write_json(out_dir / CFG_FILE, cfg)
    return out_dir
