"""Dictionary files: safetensors + JSON only (loading never unpickles).

Layout of one dictionary folder ``<run>/<site>/``:

* TopK SAE — exactly sparsify's layout, so ``sparsify.SparseCoder.load_from_disk`` works:
  ``cfg.json`` (sparsify keys ``activation, expansion_factor, normalize_decoder, num_latents, k,
  multi_topk, skip_connection, transcode, d_in`` plus ``difflens_*`` keys sparsify ignores) and
  ``sae.safetensors`` with exactly ``encoder.weight [F, D]``, ``encoder.bias [F]``,
  ``W_dec [F, D]``, ``b_dec [D]`` (extra tensors would break sparsify's strict load).
  The SAE weights act on *normalised* inputs; sparsify reproduces difflens outputs directly
  only for normalisation "none". Use :func:`export_folded` for other tools.
* Other SAE families (``sae_families``: BatchTopK, Matryoshka, JumpReLU) — the same files, with
  ``activation`` set to the family (so sparsify refuses rather than misreads them), ``difflens_arch`` and
  ``difflens_sae`` (the family's config, Matryoshka's ``prefix_sizes`` included) in cfg.json, and the
  family's tensors (``threshold [1]``; JumpReLU ``log_threshold [F]``) beside the four.
* ITDA — ``cfg.json`` + ``itda.safetensors`` (``atoms [F, D]`` and provenance vectors).
* Neurons — ``cfg.json`` only.
* Every kind — ``normalizer.safetensors`` (``mean, scale, rotation, variances``; kind in the
  file's metadata) beside the weights; a dictionary across steps normalised per step holds one set per step
  (``step3.mean`` ...; its steps listed in the metadata).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import Tensor

from difflens.atomic import atomic_save_tensors, atomic_write_json
from difflens.reading import CorruptFileError, read_json, read_metadata_json, read_safetensors
from difflens.store.run_layout import ITDA_WEIGHTS, NORMALIZER_FILE, SAE_WEIGHTS, cfg_path, store_record

from .base import Dictionary
from .itda import ITDA, PROVENANCE_KEYS, ITDAConfig
from .neurons import NeuronBasis
from .normalization import Normalizer, StepNormalizers
from .sae_families import SAE_CLASSES, MatryoshkaSAE
from .topk_sae import TopKSAE


REWRITE_HINT = "retrain the dictionary (or restore its folder from a copy)"


def _sparsify_cfg(d_in: int, num_latents: int, k: int, normalize_decoder: bool = True) -> dict:
    return {
        "activation": "topk",
        "expansion_factor": max(1, num_latents // d_in),
        "normalize_decoder": normalize_decoder,
        "num_latents": num_latents,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
    }


# ---- normaliser ----
def _normalizer_tensors(norm: Normalizer, prefix: str = "") -> dict[str, Tensor]:
    tensors = {"mean": norm.mean, "scale": norm.scale, "variances": norm.variances}
    if norm.kind == "pca":
        tensors["rotation"] = norm.rotation
    return {prefix + k: v for k, v in tensors.items()}


def save_normalizer(norm: Normalizer | StepNormalizers, folder: Path) -> None:
    """One file; per-step normalisers as ``step<t>.mean`` ... with the steps listed in the metadata."""
    metadata = {"kind": norm.kind, "dim": str(norm.dim)}
    if isinstance(norm, StepNormalizers):
        tensors = {k: v for t in norm.steps for k, v in _normalizer_tensors(norm.for_step(t), f"step{t}.").items()}
        metadata["steps"] = json.dumps(norm.steps)
    else:
        tensors = _normalizer_tensors(norm)
    atomic_save_tensors(folder / NORMALIZER_FILE, tensors, metadata=metadata, what="normaliser")


def load_normalizer(folder: Path, dim: int) -> Normalizer | StepNormalizers:
    path = folder / NORMALIZER_FILE
    if not path.exists():
        return Normalizer(dim, "none")
    tensors, meta = read_safetensors(path, "normaliser", hint=REWRITE_HINT)
    kind, width = meta.get("kind", "none"), int(meta.get("dim", dim))
    if width != dim:
        raise ValueError(f"{path}: normaliser width {width} does not match dictionary width {dim}")
    steps = read_metadata_json(path, meta, "steps", "normaliser", hint=REWRITE_HINT) if "steps" in meta else [None]
    by_step = {}
    for t in steps:
        norm = by_step[t] = Normalizer(width, kind)
        prefix = "" if t is None else f"step{t}."
        if kind != "none" and prefix + "mean" not in tensors:
            raise CorruptFileError(path, "normaliser", f"missing tensor {prefix + 'mean'!r}", REWRITE_HINT)
        for key in _normalizer_tensors(norm):
            if prefix + key in tensors:
                _copy_checked(getattr(norm, key), tensors[prefix + key], path, "normaliser", prefix + key)
    return by_step[None] if steps == [None] else StepNormalizers(by_step)


# ---- dictionaries ----
def save_dictionary(dictionary: Dictionary, folder: str | Path, meta: dict | None = None) -> Path:
    """Write ``dictionary`` into ``folder`` (see module docstring); ``meta`` (default: ``dictionary.meta``) lands
    in cfg.json as ``difflens_meta``, its store recorded relative to ``folder`` too (a run folder can move)."""
    folder = Path(folder)
    own = meta is None
    meta = dict(dictionary.meta if own else meta)
    if meta.get("store"):
        meta["store"] = store_record(meta["store"], folder)
        if own:  # the object in memory records what its file records
            dictionary.meta["store"] = meta["store"]
    extra = {"difflens_kind": dictionary.kind, "difflens_meta": meta}
    if isinstance(dictionary, TopKSAE):
        cfg = {**_sparsify_cfg(dictionary.d_in, dictionary.num_latents, dictionary.k), **extra}
        cfg["difflens_normalization"] = dictionary.normalizer.kind
        arch = dictionary.cfg.arch
        if arch != "topk":
            cfg.update(activation=arch, difflens_arch=arch, difflens_sae=dictionary.cfg.to_dict())
            if isinstance(dictionary, MatryoshkaSAE):
                cfg["difflens_sae"]["prefix_sizes"] = dictionary.prefix_sizes
        tensors = {
            "encoder.weight": dictionary.W_enc,
            "encoder.bias": dictionary.b_enc,
            "W_dec": dictionary.W_dec,
            "b_dec": dictionary.b_dec,
            **dictionary.family_tensors(),
        }
        atomic_save_tensors(folder / SAE_WEIGHTS, tensors, what="SAE weights")
    elif isinstance(dictionary, ITDA):
        cfg = {"d_in": dictionary.d_in, "num_latents": dictionary.num_latents, **dictionary.cfg.to_dict(), **extra}
        tensors = {"atoms": dictionary.atoms, **{f"provenance.{k}": v for k, v in dictionary.provenance.items()}}
        atomic_save_tensors(folder / ITDA_WEIGHTS, tensors, what="ITDA atoms")
    elif isinstance(dictionary, NeuronBasis):
        cfg = {"d_in": dictionary.d_in, "num_latents": dictionary.num_latents, "k": dictionary.k, **extra}
    else:
        raise ValueError(f"cannot save dictionary of type {type(dictionary).__name__}")
    save_normalizer(dictionary.normalizer, folder)
    atomic_write_json(cfg_path(folder), cfg, what="dictionary config")
    dictionary.path = folder.resolve()  # where it now lives: a feature index built from it records this folder
    return folder


def read_cfg(folder: str | Path) -> dict:
    path = cfg_path(folder)
    if not path.exists():
        raise FileNotFoundError(f"no dictionary at {folder}: {path} is missing")
    cfg = read_json(path, "dictionary config", hint=REWRITE_HINT, expect=dict)
    if "d_in" not in cfg:
        raise CorruptFileError(path, "dictionary config", "no 'd_in' width", REWRITE_HINT)
    return cfg


def load_dictionary(folder: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load any difflens dictionary folder (or a plain sparsify TopK SAE folder), with its ``meta``."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    dictionary = _load(folder, cfg).to(device)
    dictionary.meta = cfg.get("difflens_meta", {})
    dictionary.path = folder.resolve()
    return dictionary


def _load(folder: Path, cfg: dict) -> Dictionary:
    kind = cfg.get("difflens_kind", "sae")
    d_in = int(cfg["d_in"])
    norm = load_normalizer(folder, d_in)
    if kind == "sae":
        arch = cfg.get("difflens_arch", "topk")
        if arch not in SAE_CLASSES:
            raise ValueError(f"{folder}: unknown SAE family {arch!r} (known: {', '.join(SAE_CLASSES)})")
        if (arch == "topk" and cfg.get("activation", "topk") != "topk") or cfg.get("skip_connection") or cfg.get("transcode"):
            raise ValueError(f"{folder}: only plain TopK SAEs are supported (no groupmax/skip/transcoder)")
        path = folder / SAE_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing")
        tensors, _ = read_safetensors(path, "SAE weights", hint=REWRITE_HINT)
        num_latents = int(cfg.get("num_latents") or cfg["expansion_factor"] * d_in)
        config_cls, model_cls = SAE_CLASSES[arch]
        names = set(config_cls.__dataclass_fields__) - {"num_latents", "k", "normalization"}
        extra = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("difflens_sae", {}).items() if k in names}
        sae = model_cls(d_in, config_cls(num_latents=num_latents, k=int(cfg["k"]), normalization=norm.kind, **extra),
                        normalizer=norm)
        with torch.no_grad():
            for ours, theirs in (("W_enc", "encoder.weight"), ("b_enc", "encoder.bias"), ("W_dec", "W_dec"), ("b_dec", "b_dec")):
                if theirs not in tensors:
                    raise CorruptFileError(path, "SAE weights", f"missing tensor {theirs!r}", REWRITE_HINT)
                _copy_checked(getattr(sae, ours), tensors[theirs], path, "SAE weights", theirs)
        missing = sorted(set(sae.family_tensors()) - set(tensors))
        if missing:
            raise CorruptFileError(path, "SAE weights", f"missing tensor(s) {', '.join(missing)} of a {arch} SAE",
                               REWRITE_HINT)
        sae.load_family_tensors(tensors)
        return sae
    if kind == "itda":
        path = folder / ITDA_WEIGHTS
        tensors, _ = read_safetensors(path, "ITDA atoms", hint=REWRITE_HINT)
        missing = [k for k in ("atoms", *(f"provenance.{k}" for k in PROVENANCE_KEYS)) if k not in tensors]
        if missing:
            raise CorruptFileError(path, "ITDA atoms", f"missing tensor(s) {', '.join(missing)}", REWRITE_HINT)
        fields = {k: cfg[k] for k in ITDAConfig.__dataclass_fields__ if k in cfg}
        itda = ITDA(d_in, ITDAConfig(**fields), normalizer=norm)
        itda.load_atoms(tensors["atoms"], {k: tensors[f"provenance.{k}"] for k in PROVENANCE_KEYS})
        return itda
    if kind == "neurons":
        return NeuronBasis(d_in, cfg.get("k"))
    raise ValueError(f"{folder}: unknown dictionary kind {kind!r}")


def _copy_checked(param: Tensor, value: Tensor, path: Path, what: str, name: str) -> None:
    """``param.copy_(value)``, refusing a tensor of another shape (torch would broadcast a scalar silently)."""
    if tuple(value.shape) != tuple(param.shape):
        raise CorruptFileError(path, what, f"tensor {name!r} has shape {tuple(value.shape)}, expected "
                                           f"{tuple(param.shape)}", REWRITE_HINT)
    param.copy_(value)


@torch.no_grad()
def fold_normalizer(sae: TopKSAE) -> dict[str, Tensor]:
    """The SAE's weights acting on residual space, as float64 ``W_enc [F, D]``, ``b_enc``, ``W_dec [F, D]``, ``b_dec``.

    With z = ((x − mean) R) / scale: W_enc (z − b_dec) + b_enc = W' (x − b_dec') + b_enc' where
    W' = (W_enc / scale) Rᵀ, b_dec' = denormalize(b_dec), b_enc' = b_enc − W_enc b_dec + W' (b_dec' − mean);
    the decoder becomes W_dec' = (W_dec · scale) Rᵀ.
    """
    norm = copy.deepcopy(sae.normalizer).cpu()  # a copy: Module.to would convert the SAE's own buffers
    W_enc = sae.W_enc.detach().to("cpu", torch.float64)
    b_enc = sae.b_enc.detach().to("cpu", torch.float64)
    W_dec = sae.W_dec.detach().to("cpu", torch.float64)
    b_dec = sae.b_dec.detach().to("cpu", torch.float64)
    if norm.kind == "none":
        return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    W_enc_res = norm.encoder_to_residual(W_enc)
    b_dec_res = norm.denormalize(b_dec[None])[0]
    b_enc_res = b_enc - W_enc @ b_dec + W_enc_res @ (b_dec_res - norm.mean.double())
    return {"W_enc": W_enc_res, "b_enc": b_enc_res, "W_dec": norm.to_residual_directions(W_dec), "b_dec": b_dec_res}


def export_folded(sae: TopKSAE, folder: str | Path) -> Path:
    """Write a sparsify-layout SAE acting directly on residual-space activations (see :func:`fold_normalizer`;
    decoder rows are no longer unit norm). sparsify reads TopK SAEs only: other families are refused."""
    if not isinstance(sae, TopKSAE) or sae.cfg.arch != "topk":
        raise ValueError(f"sparsify reads TopK SAEs only, not {getattr(getattr(sae, 'cfg', None), 'arch', type(sae).__name__)}"
                         "; export other SAE families with --format saelens")
    folder = Path(folder)
    w = {k: v.float() for k, v in fold_normalizer(sae).items()}
    atomic_save_tensors(folder / SAE_WEIGHTS,
                        {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]})
    cfg = {**_sparsify_cfg(sae.d_in, sae.num_latents, sae.k, normalize_decoder=False), "difflens_kind": "sae"}
    cfg["difflens_meta"] = {"folded_from_normalization": sae.normalizer.kind}
    atomic_write_json(cfg_path(folder), cfg)
    return folder
