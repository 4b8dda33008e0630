"""Growing an ITDA dictionary in one streamed pass (single process): data -> job -> normaliser -> batches -> files.

Each batch is encoded with the current atoms; tokens whose relative loss exceeds the threshold become
candidate atoms (see :meth:`~..itda.ITDA.select_new_atoms`), each keeping its provenance (store row,
image, step, token position). Checkpoints hold the atoms and the data position; resume is exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable

import torch

from ...checkpoint import restore_rng
from ...distributed import launched_world_size, pick_device
from ...locks import output_lock
from ..base import check_activations
from ..itda import ITDA, PROVENANCE_KEYS, relative_loss
from .config import ITDATrainConfig, RunConfig
from ..normalization import normalize_rows
from .data import batch_stream, resolve_data, row_steps
from .job import start_job

StepCallback = Callable[[int, ITDA, dict], "bool | None"]


def train_itda(source, cfg: ITDATrainConfig | None = None, run: RunConfig | None = None, *, site: str | None = None,
               step: int | None = None, split: str = "auto", on_step: StepCallback | None = None) -> ITDA:
    """Grow an ITDA dictionary over ``source``; writes ``run.out`` (locked for the run) when given. ``on_step`` as
    for train_sae."""
    cfg, run = cfg or ITDATrainConfig(), run or RunConfig()
    cfg.validate()
    if launched_world_size() > 1:
        raise ValueError("ITDA training is sequential; run it in one process (not under torchrun)")
    data = resolve_data(source, site, step, split)
    with output_lock(run.out):
        return _grow(cfg, run, data, on_step)


def _grow(cfg: ITDATrainConfig, run: RunConfig, data, on_step) -> ITDA:
    reader = data.reader
    device = pick_device(run.device)
    arch = cfg.architecture()
    total_steps = max(1, math.ceil(cfg.num_tokens / cfg.batch_size))

    job, finished, restored, normalizer = start_job("itda", cfg, run, data, total_steps, arch.normalization,
                                                     cfg.seed)
    if finished is not None:
        return finished
    itda = ITDA(reader.dim, arch, normalizer=normalizer).to(device)
    done = epoch = batch_idx = 0
    if restored is not None:
        tensors, info = restored
        itda.load_atoms(tensors["atoms"].to(device), {k: tensors[f"provenance.{k}"] for k in PROVENANCE_KEYS})
        restore_rng(tensors)
        done, epoch, batch_idx = info["step"], info["epoch"], info["next_batch"]
    meta = {**data.origin(), "method": "itda", "train": asdict(cfg), "job": job.identity()}
    itda.meta = meta  # known from the start, so on_step callbacks can evaluate on the right store
    job.open_log(done, data.site or "itda", meta)
    stream = batch_stream(reader, min(cfg.batch_size, reader.num_rows), cfg.seed, epoch, batch_idx)
    stats: dict = {}
    while done < total_steps:
        epoch, batch_idx, acts, rows = next(stream)
        check_activations(acts, reader.dim)
        z = normalize_rows(normalizer, acts.float().to(device), row_steps(reader, rows))
        if itda.size == 0:
            _add(itda, reader, z[:1], rows[:1])
        codes = itda.encode_normalized(z)
        recon = itda.decode_normalized(codes)
        chosen = itda.select_new_atoms(z, relative_loss(z, recon))
        added = _add(itda, reader, z[chosen], rows[chosen.cpu()])
        done += 1
        fvu = float((z - recon).pow(2).sum() / (z - z.mean(0)).pow(2).sum().clamp_min(1e-12))
        stats = {"fvu": fvu, "l0": float(codes.l0().float().mean()), "atoms": itda.size, "added": added}
        job.log(done, stats)
        job.checkpoint(done, lambda: {"atoms": itda.atoms, **{f"provenance.{k}": v for k, v in itda.provenance.items()}},
                       {"epoch": epoch, "next_batch": batch_idx + 1}, normalizer)
        if on_step is not None and on_step(done, itda, stats):
            break
    job.close_log()
    itda.meta = {**meta, "steps": done, "tokens": done * cfg.batch_size, "final": stats, "seconds": job.seconds()}
    job.save(itda, done)
    return itda


def _add(itda: ITDA, reader, z_BD: torch.Tensor, rows_B: torch.Tensor) -> int:
    """Add atoms with their provenance read from the reader's trace."""
    if rows_B.numel() == 0:
        return 0
    trace = reader.trace(rows_B)
    prov = {"row_id": rows_B, **{k: torch.as_tensor(trace[k]) for k in ("image_id", "step", "token_row", "token_col")}}
    return itda.add_atoms(z_BD, prov)
