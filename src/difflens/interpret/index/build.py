"""`build_feature_index`: one streaming pass over a site's rows into a `FeatureIndex`, resumable in a folder.

    plan the rows (store, steps, image layout of the split) -> the header (identity: dictionary, store rows,
    config) -> resume a folder of the same job, or start empty tensors -> fold batches of whole images into the
    accumulator, checkpointing the folder -> the finished (or, with max_batches, incomplete) index
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflens.locks import locks_output
from difflens.outputs import note, same_settings
from difflens.reading import CorruptFileError

from .accumulate import Accumulator, empty_tensors, encode_rows
from .config import IndexConfig
from .files import FORMAT, FORMAT_VERSION
from .identity import dictionary_identity, store_identity
from .queries import FeatureIndex
from .rows import IndexedRows

CHECKPOINT_SECONDS = 60.0  # checkpoint cadence when IndexConfig.checkpoint_every is 0


@locks_output(lambda dictionary, source=None, *, out=None, **_: out)
def build_feature_index(dictionary, source=None, *, steps=None, out=None, config: IndexConfig | None = None,
                        device="cpu", progress: bool = True, site: str | None = None, resume: bool = True,
                        max_batches: int | None = None) -> FeatureIndex:
    """Index every latent of ``dictionary`` in one streaming pass over ``source``'s rows of its site.

    source: a store folder or opened store (None: the store the dictionary was trained on). steps: None (the
    dictionary's step), "all" (every recorded step of the site) or ints. out: None builds in memory; a folder
    is written atomically, checkpointed every ``config.checkpoint_every`` batches (0: every minute) and resumed
    after a kill with the same result as an uninterrupted run; a folder made for another dictionary, store,
    site, steps or config is refused (ValueError naming the differences) unless ``resume=False``, which starts
    over. A finished folder of the same job is just loaded. site: overrides the dictionary's site.
    device: where encoding and bookkeeping run (the dictionary is moved there). max_batches: stop after that
    many batches in this call, checkpoint, and return the incomplete index (tests, budgeted runs).
    """
    cfg = (config or IndexConfig()).validate()
    rows = IndexedRows.open(dictionary, source, site, steps, cfg.split)
    device = torch.device(device)
    dictionary.to(device)
    identity = _identity(dictionary, rows, cfg)
    header = _header(dictionary, rows, cfg, identity)
    folder = Path(out) if out is not None else None
    previous = _same_job(folder, identity, dictionary, rows.store, resume) if folder is not None else None
    if previous is not None and previous.complete:
        previous.config.quantile_bins = cfg.quantile_bins  # how samples are shown, not what the pass records
        return previous
    if previous is not None:  # resume where it stopped
        header["position"], header["seconds"] = previous.header["position"], previous.header.get("seconds", 0.0)
        tensors = previous.tensors
    else:
        tensors = _fresh_tensors(dictionary.num_latents, rows, cfg)
    return _Pass(dictionary, rows, header, tensors, cfg, device, folder).run(max_batches, progress)


def _identity(dictionary, rows: IndexedRows, cfg: IndexConfig) -> dict:
    """What the index is of: a resume must match every field."""
    return {
        "site": rows.site, "steps": rows.steps, "split": cfg.split,
        "dictionary": dictionary_identity(dictionary),
        "store": store_identity(rows.store, rows.site, rows.steps, cfg.split, rows.rows),
        "config": cfg.identity(),
    }


def _header(dictionary, rows: IndexedRows, cfg: IndexConfig, identity: dict) -> dict:
    """The header of a new index: identity, provenance, the token grid, and the pass's position (its start)."""
    first = rows.readers[rows.steps[0]]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, **identity, "config": asdict(cfg),
        "dictionary_path": str(dictionary.path) if getattr(dictionary, "path", None) else None,
        "store_path": str(rows.store.root.resolve()), "stream": first.stream,
        "grid": list(first.grid) if first.grid else None, "active": "value > 0",
        "images_indexed": {str(s): int(len(rows.todo[s])) for s in rows.steps},
        "position": {"step_index": 0, "batch": 0}, "complete": False,
        # Matryoshka: the nested prefix sizes, so the index (and the browser) can tell each latent's prefix level
        "prefix_sizes": [int(s) for s in dictionary.prefix_sizes] if hasattr(dictionary, "prefix_sizes") else None,
    }


def _same_job(folder: Path, identity: dict, dictionary, store, resume: bool) -> FeatureIndex | None:
    """The index ``folder`` holds of this job, finished or not; None when it holds none or ``resume`` is off.
    An index of another job is refused (ValueError naming the differences) unless ``resume`` is off, which
    replaces it (``outputs.same_settings``), as it replaces a corrupt one (which a resume refuses, naming it)."""
    try:
        saved = FeatureIndex.read_header(folder)
    except CorruptFileError as err:
        if resume:
            raise
        note(f"replacing a corrupt feature index: {err.path} ({err.problem})")
        saved = None
    was = None if saved is None else {**{k: saved.get(k) for k in identity},
                                      "config": IndexConfig(**saved["config"]).identity()}
    if same_settings(folder, was, identity, what="a feature index", label="index", overwrite=not resume,
                     hint="use another out folder, or resume=False (--overwrite) to replace it") and resume:
        return FeatureIndex.load(folder, dictionary=dictionary, store=store)
    return None


def _fresh_tensors(num_latents: int, rows: IndexedRows, cfg: IndexConfig) -> dict[str, Tensor]:
    """Empty tensors with the store's image layout of every step filled in."""
    tensors = empty_tensors(num_latents, rows.steps, rows.n_images, cfg)
    for j, s in enumerate(rows.steps):
        tensors["image_start"][j] = torch.from_numpy(rows.layouts[s][0])
        tensors["image_rows"][j] = torch.from_numpy(rows.layouts[s][1])
    return tensors


class _Pass:
    """This call's share of the streaming pass: batches of whole images, step by step from the header's position,
    folded into the accumulator; the folder (if any) is checkpointed on the config's cadence and at the end."""

    def __init__(self, dictionary, rows: IndexedRows, header: dict, tensors: dict[str, Tensor], cfg: IndexConfig,
                 device: torch.device, folder: Path | None):
        self.dictionary, self.rows, self.header, self.cfg, self.device, self.folder = (dictionary, rows, header, cfg,
                                                                                       device, folder)
        self.acc = Accumulator(tensors, cfg, device)
        self.batches = {s: [rows.todo[s][i : i + cfg.batch_images] for i in range(0, len(rows.todo[s]), cfg.batch_images)]
                        for s in rows.steps}
        self.started = time.perf_counter()
        self.seconds0 = float(header.get("seconds", 0.0))

    def run(self, max_batches: int | None, progress: bool) -> FeatureIndex:
        """Fold every remaining batch (at most ``max_batches``) and return the index."""
        from difflens.progress import progress as progress_bar

        steps, header = self.rows.steps, self.header
        position = header["position"]
        done_tokens = int(self.acc.t["tokens"].sum())
        bar = progress_bar(total=sum(self.rows.rows.values()), initial=done_tokens, desc=f"index {self.rows.site}",
                           unit="tok", enabled=progress)
        last_save, processed = time.perf_counter(), 0
        try:
            for j in range(position["step_index"], len(steps)):
                step = steps[j]
                for b in range(position["batch"] if j == position["step_index"] else 0, len(self.batches[step])):
                    if max_batches is not None and processed >= max_batches:
                        header["position"] = {"step_index": j, "batch": b}
                        return self.snapshot(False)
                    bar.update(self.fold(j, step, self.batches[step][b]))
                    processed += 1
                    header["position"] = {"step_index": j, "batch": b + 1}
                    if self.folder is not None and _checkpoint_due(self.cfg, processed, last_save):
                        self.snapshot(False)
                        last_save = time.perf_counter()
                header["position"] = {"step_index": j + 1, "batch": 0}
            return self.snapshot(True)
        finally:
            bar.close()

    def fold(self, j: int, step: int, images: np.ndarray) -> int:
        """Encode one batch of whole images at ``step`` (its position ``j``) into the accumulator; returns its rows."""
        row_ids, n_rows = self.rows.row_ids(step, images)
        acts = self.rows.readers[step].read_rows(row_ids).to(self.device)
        values, indices = encode_rows(self.dictionary, acts, step)
        slot = torch.repeat_interleave(torch.arange(len(images), device=self.device),
                                       torch.from_numpy(n_rows).to(self.device))
        self.acc.update(j, step, values, indices, slot, torch.from_numpy(images).to(self.device), len(row_ids))
        return len(row_ids)

    def snapshot(self, complete: bool) -> FeatureIndex:
        """The index as it stands (written to the folder, if any)."""
        header = self.header
        header["complete"] = complete
        header["seconds"] = self.seconds0 + time.perf_counter() - self.started
        index = FeatureIndex(json.loads(json.dumps(header)), self.acc.cpu(), store=self.rows.store,
                             dictionary=self.dictionary)
        if self.folder is not None:
            index.save(self.folder)
        return index


def _checkpoint_due(cfg: IndexConfig, processed: int, last_save: float) -> bool:
    if cfg.checkpoint_every:
        return processed % cfg.checkpoint_every == 0
    return time.perf_counter() - last_save >= CHECKPOINT_SECONDS
