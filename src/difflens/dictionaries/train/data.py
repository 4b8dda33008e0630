"""What a dictionary is trained or evaluated on: any source resolved to a reader plus where its rows came from.

A source is a store folder (or ``.safetensors`` file with an ``acts`` tensor), an opened store, an
in-memory capture, a reader, or a tensor of activations ``(..., D)``. Stores split by image (see
``difflens capture split``): training reads the ``train`` split, evaluation the ``held-out`` one.

A dictionary may span several denoising steps of one site (``step=[0, 3, 7]`` or ``"all"``): a
:class:`StepsReader` then serves batches balanced per step, and the normaliser is one for all steps
(``step_normalization="shared"``, fitted on those balanced batches) or one per step (``"per-step"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ...distributed import rank_and_world
from ..base import check_activations
from ..normalization import Normalizer, StepNormalizers, accumulate

SPLITS = ("all", "train", "held-out")
STEP_NORMALIZATIONS = ("shared", "per-step")


@dataclass
class TrainingData:
    """A reader and its provenance: site, step (``steps``: the denoising steps of a step-spanning reader, whose
    ``step`` is None), the store's identity (path, prompts hash, weights) and split."""

    reader: object
    site: str | None = None
    step: int | None = None
    store: dict | None = None
    split: str = "all"
    entries: list[tuple[str, int]] = field(default_factory=list)
    holdout: dict | None = None  # the store's split rule {"fraction", "seed"} when it has one
    steps: list[int] | None = None

    def origin(self) -> dict:
        """What a dictionary records about its data (cfg.json ``difflens_meta``; ``denoising_steps`` only for a
        dictionary spanning several steps, since ``steps`` there counts optimiser steps)."""
        origin = {"site": self.site, "step": self.step, "store": self.store, "split": self.split, "holdout": self.holdout}
        return {**origin, "denoising_steps": self.steps} if self.steps else origin


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


def wanted_steps(step) -> list[int] | str | None:
    """A list of several steps or "all" (a step-spanning dictionary), else None: ``step`` is one step or None."""
    if step == "all":
        return "all"
    if isinstance(step, str):
        parts = [p for p in step.split(",") if p.strip()]
        return wanted_steps([int(p) for p in parts]) if len(parts) > 1 else None
    if isinstance(step, (list, tuple)):
        return sorted({int(t) for t in step}) if len(set(step)) > 1 else None
    return None


def single_step(step) -> int | None:
    """One step given as an int, a numeric string or a one-item list (None: none)."""
    if isinstance(step, (list, tuple)):
        return int(step[0]) if step else None
    return None if step is None else int(step)


def resolve_data(source, site: str | None = None, step: int | list[int] | str | None = None,
                 split: str = "auto") -> TrainingData:
    """Turn any supported source into :class:`TrainingData` (see the module docstring); ``step`` may list
    several steps of the site, or be "all" of its recorded steps (a store only)."""
    from difflens.store.sources import TensorReader, open_store, pick_entry

    if isinstance(source, TrainingData):
        return source
    several = wanted_steps(step)
    step = single_step(step) if several is None else None
    is_store = isinstance(source, (str, Path)) and Path(source).is_dir() or hasattr(source, "entries")
    if several is not None and not is_store:
        raise ValueError(f"a dictionary across steps {several} needs a store (its rows know their step); got "
                         f"{source if isinstance(source, (str, Path)) else 'a ' + type(source).__name__}")
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
        chosen = default_split(source, split)
        identity = source.identity() if hasattr(source, "identity") else None
        if several is not None:
            site = pick_entry([(s, 0) for s, _ in entries], site, 0, where)[0]  # the site alone: steps checked below
            stored = sorted(t for s, t in entries if s == site)
            steps = stored if several == "all" else several
            for t in steps:
                pick_entry(entries, site, t, where)  # names the stored steps when one is missing
            if len(steps) == 1:
                several, step = None, steps[0]
            else:
                reader = StepsReader([source.reader(site, t, split=chosen) for t in steps])
                return TrainingData(reader, site, None, identity, chosen, entries, split_rule(source), steps)
        site, step = pick_entry(entries, site, step, where)
        reader = source.reader(site, step, split=chosen)
        return TrainingData(reader, site, step, identity, chosen, entries, split_rule(source))
    if hasattr(source, "iter_batches") and hasattr(source, "read_rows"):  # a reader
        store = getattr(source, "store", None)
        identity = store.identity() if store is not None and hasattr(store, "identity") else None
        return TrainingData(source, getattr(source, "site", site), getattr(source, "step", step), identity,
                            getattr(source, "split", "all"), holdout=split_rule(store))
    raise ValueError(f"cannot read activations from a {type(source).__name__}: pass a store folder, an opened store, "
                     f"a capture, a reader or a tensor")


class StepsReader:
    """An :class:`~difflens.store.sources.ActivationReader` over several steps of one site, balanced per step:
    every batch holds ``batch_size // S`` rows of each of the S steps (the first ``batch_size % S`` steps one
    more), each step's rows shuffled by its own reader; an epoch ends when the smallest step runs out.

    Row ids interleave the steps' own ids: ``id = local_id * S + i`` for the i-th step, so :meth:`steps_of`
    reads a row's step from its id and ids stay stable across splits (as the steps' own ids do).
    """

    def __init__(self, readers: list):
        if len({r.dim for r in readers}) != 1:
            raise ValueError(f"the steps have different widths {[r.dim for r in readers]}")
        self.readers = readers
        self.steps = [int(r.step) for r in readers]
        self.site = readers[0].site
        self.step = None
        self.dim = readers[0].dim
        self.dtype = readers[0].dtype
        self.split = readers[0].split
        self.store = getattr(readers[0], "store", None)
        self.manifest = {"steps": self.steps, "manifests": [r.manifest for r in readers]}
        self.num_rows = sum(r.num_rows for r in readers)

    def _quotas(self, batch_size: int) -> list[int]:
        n = len(self.readers)
        if batch_size < n:
            raise ValueError(f"a batch of {batch_size} rows cannot hold every one of the {n} steps; raise batch_size")
        return [batch_size // n + (i < batch_size % n) for i in range(n)]

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                     drop_last: bool = False, *, rank: int = 0, world_size: int = 1) -> Iterator:
        """(acts_BD, row_ids_B) with each step's quota of rows in every batch (see the class docstring)."""
        n = len(self.readers)
        streams = [r.iter_batches(q, shuffle=shuffle, seed=seed + 7 * i, epoch=epoch, drop_last=drop_last)
                   for i, (r, q) in enumerate(zip(self.readers, self._quotas(batch_size)))]
        for j, parts in enumerate(zip(*streams)):
            if j % world_size == rank:
                yield (torch.cat([acts for acts, _ in parts]),
                       torch.cat([rows.long() * n + i for i, (_, rows) in enumerate(parts)]))

    def _split_ids(self, row_ids):
        ids = torch.as_tensor(row_ids, dtype=torch.long)
        return ids, ids % len(self.readers), ids // len(self.readers)

    def steps_of(self, row_ids) -> torch.Tensor:
        """(R,) the denoising step of each row."""
        _, which, _ = self._split_ids(row_ids)
        return torch.as_tensor(self.steps)[which]

    def read_rows(self, row_ids) -> torch.Tensor:
        ids, which, local = self._split_ids(row_ids)
        out = torch.empty(len(ids), self.dim)
        for i, reader in enumerate(self.readers):
            mine = which == i
            if mine.any():
                out[mine] = reader.read_rows(local[mine])
        return out

    def trace(self, row_ids) -> dict:
        ids, which, local = self._split_ids(row_ids)
        out: dict = {}
        for i, reader in enumerate(self.readers):
            mine = (which == i).numpy()
            if mine.any():
                for key, values in reader.trace(local[torch.from_numpy(mine)]).items():
                    if key not in out:
                        out[key] = np.empty(len(ids), dtype=values.dtype)
                    out[key][mine] = values
        return out

    def image_ids(self) -> np.ndarray:
        return np.unique(np.concatenate([r.image_ids() for r in self.readers]))


def row_steps(reader, row_ids) -> torch.Tensor | None:
    """(B,) the denoising steps of a batch's rows for a step-spanning reader; None for a one-step reader."""
    return reader.steps_of(row_ids) if isinstance(reader, StepsReader) else None


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


def fit_normalizer(reader, kind: str, norm_fit_tokens: int, min_tokens_per_dim: float, seed: int,
                   step_normalization: str = "shared") -> Normalizer | StepNormalizers:
    """Stream up to ``norm_fit_tokens`` tokens (at least min_tokens_per_dim × width) into the normalisation fit;
    a step-spanning reader with ``step_normalization="per-step"`` gets one fit per step (each with that budget),
    all in the axes of the shared fit (:meth:`Normalizer.in_frame`: each step's own mean and per-axis scale, one
    rotation), so the dictionary's coordinates mean the same residual directions at every step."""
    if step_normalization not in STEP_NORMALIZATIONS:
        raise ValueError(f"unknown step_normalization {step_normalization!r}; choose one of {', '.join(STEP_NORMALIZATIONS)}")
    if kind == "none":
        return Normalizer(reader.dim, "none")
    if isinstance(reader, StepsReader) and step_normalization == "per-step":
        # only PCA's rotation is shared; a standardising frame has no axes to fit
        frame = (fit_normalizer(reader, kind, norm_fit_tokens, min_tokens_per_dim, seed) if kind == "pca"
                 else Normalizer(reader.dim, kind))
        moments = {t: accumulate(_fit_batches(r, norm_fit_tokens, min_tokens_per_dim, seed), r.dim)
                   for t, r in zip(reader.steps, reader.readers)}
        return StepNormalizers({t: Normalizer.in_frame(acc, frame, min_tokens_per_dim=min_tokens_per_dim)
                                for t, acc in moments.items()})
    return Normalizer.fit(_fit_batches(reader, norm_fit_tokens, min_tokens_per_dim, seed), reader.dim, kind,
                          min_tokens_per_dim=min_tokens_per_dim)


def _fit_batches(reader, norm_fit_tokens: int, min_tokens_per_dim: float, seed: int) -> Iterator[torch.Tensor]:
    """This rank's interleaved share of up to ``norm_fit_tokens`` shuffled rows (at least min_tokens_per_dim ×
    width), the rows a normalisation fit reads."""
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

    return mine()
