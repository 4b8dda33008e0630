"""What a dictionary is trained or evaluated on: any source resolved to a reader plus where its rows came from.

A source is a store folder (or ``.safetensors`` file with an ``acts`` tensor), an opened store, an
in-memory capture, a reader, or a tensor of activations ``(..., D)``. Stores split by image (see
``difflens capture split``): training reads the ``train`` split, evaluation the ``held-out`` one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ...distributed import rank_and_world
from ..base import check_activations
from ..normalization import Normalizer

SPLITS = ("all", "train", "held-out")


@dataclass
class TrainingData:
    """A reader and its provenance: site, step, the store's identity (path, prompts hash, weights) and split."""

    reader: object
    site: str | None = None
    step: int | None = None
    store: dict | None = None
    split: str = "all"
    entries: list[tuple[str, int]] = field(default_factory=list)
    holdout: dict | None = None  # the store's split rule {"fraction", "seed"} when it has one

    def origin(self) -> dict:
        """What a dictionary records about its data (cfg.json ``difflens_meta``)."""
        return {"site": self.site, "step": self.step, "store": self.store, "split": self.split, "holdout": self.holdout}


def default_split(store, wanted: str) -> str:
    """'auto' -> 'train' when the store is split by image, else 'all'."""
    if wanted != "auto":
        if wanted not in SPLITS:
            raise ValueError(f"unknown split {wanted!r}; choose one of {', '.join(SPLITS)} or auto")
        return wanted
    return "train" if getattr(store, "holdout", None) else "all"


def split_rule(store) -> dict | None:
    """{"fraction", "seed"} of a store's held-out split (None: not split)."""
    holdout = getattr(store, "holdout", None)
    return {"fraction": holdout["fraction"], "seed": holdout["seed"]} if holdout else None


def resolve_data(source, site: str | None = None, step: int | None = None, split: str = "auto") -> TrainingData:
    """Turn any supported source into :class:`TrainingData` (see the module docstring)."""
    from difflens.store.sources import TensorReader, open_store, pick_entry

    if isinstance(source, TrainingData):
        return source
    if isinstance(source, torch.Tensor):
        if source.ndim < 2:
            raise ValueError(f"activations must have shape (..., width), got {tuple(source.shape)}")
        if split not in ("auto", "all"):
            raise ValueError(f"a tensor has no {split!r} split; pass a store for held-out evaluation")
        return TrainingData(TensorReader(source.reshape(-1, source.shape[-1])), site, step)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            return TrainingData(TensorReader.from_file(path), site, step, {"path": str(path.resolve())})
        source = open_store(path)
    if hasattr(source, "entries") and hasattr(source, "reader"):  # an opened store or an in-memory capture
        entries = source.entries()
        where = f"store {getattr(source, 'root', 'in memory')}"
        site, step = pick_entry(entries, site, step, where)
        chosen = default_split(source, split)
        reader = source.reader(site, step, split=chosen)
        identity = source.identity() if hasattr(source, "identity") else None
        return TrainingData(reader, site, step, identity, chosen, entries, split_rule(source))
    if hasattr(source, "iter_batches") and hasattr(source, "read_rows"):  # a reader
        store = getattr(source, "store", None)
        identity = store.identity() if store is not None and hasattr(store, "identity") else None
        return TrainingData(source, getattr(source, "site", site), getattr(source, "step", step), identity,
                            getattr(source, "split", "all"), holdout=split_rule(store))
    raise ValueError(f"cannot read activations from a {type(source).__name__}: pass a store folder, an opened store, "
                     f"a capture, a reader or a tensor")


def batch_stream(reader, batch_size: int, seed: int, start_epoch: int = 0, start_batch: int = 0) -> Iterator:
    """Endless shuffled (epoch, batch_index, acts_BD, row_ids_B); resumes at (epoch, batch).

    The order is a pure function of (seed, epoch), so a resumed run sees the batches an uninterrupted one would.
    """
    if reader.num_rows < batch_size:
        raise ValueError(f"the data holds {reader.num_rows} rows, fewer than one batch of {batch_size}; lower batch_size")
    epoch = start_epoch
    while True:
        it = reader.iter_batches(batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True)
        for i, (acts, rows) in enumerate(it):
            if epoch == start_epoch and i < start_batch:
                continue
            yield epoch, i, acts, rows
        epoch += 1


def fit_normalizer(reader, kind: str, norm_fit_tokens: int, min_tokens_per_dim: float, seed: int) -> Normalizer:
    """Stream up to ``norm_fit_tokens`` tokens (at least min_tokens_per_dim × width) into the normalisation fit."""
    if kind == "none":
        return Normalizer(reader.dim, "none")
    rank, world = rank_and_world()
    budget = min(reader.num_rows, max(norm_fit_tokens, int(min_tokens_per_dim * reader.dim)))

    def mine():
        seen = 0
        for acts, _ in reader.iter_batches(8192, shuffle=True, seed=seed + 7919, epoch=0):
            acts = acts[: budget - seen]
            seen += acts.shape[0]
            check_activations(acts, reader.dim)
            yield acts[rank::world].float()  # each rank accumulates an interleaved share
            if seen >= budget:
                return

    return Normalizer.fit(mine(), reader.dim, kind, min_tokens_per_dim=min_tokens_per_dim)
