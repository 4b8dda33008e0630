"""A training job's folder: what it already holds, checkpoints bound to the job's settings and data, the log,
the final files.

A checkpoint, and a finished dictionary's ``difflens_meta.job``, record the job's settings (method, config,
normalisation fit), the data it reads (site, step, split, the store's model, weights and prompts hash, rows)
and, for checkpoints, a hash of the fitted normaliser. Opening a folder (:meth:`Job.open`, one comparison for
both: ``outputs.same_settings``):

- a finished dictionary of this very job is loaded, not retrained ("already done");
- a checkpoint of this very job is resumed;
- either of another job is refused with the differences named, unless ``overwrite=True`` (``--overwrite``),
  which replaces it, saying so on stderr;
- ``resume=False`` (``--no-resume``) starts over whatever the folder holds, saying so when it held something.

Replacing wipes the folder's dictionary config, checkpoint and log first, so the run starts truly fresh and
a kill mid-way never leaves the old dictionary's config beside the new job's checkpoint. The folder is
locked (``locks``) by the training functions for the whole run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ...checkpoint import load_latest, save_checkpoint, trim_log
from ...distributed import rank_and_world
from ...outputs import note, same_settings
from ...progress import progress
from ...store.run_layout import CFG_FILE, CHECKPOINT_DIR, NORMALIZER_FILE, TENSORBOARD_DIR, TRAIN_LOG
from ..io import load_dictionary, load_normalizer, read_cfg, save_dictionary, save_normalizer
from ..normalization import Normalizer, StepNormalizers
from .config import RunConfig, job_settings
from .data import TrainingData, fit_normalizer

REPLACE_HINT = ("rerun with the original settings to resume or reuse it, pass --overwrite (overwrite=True) or "
                "--no-resume (resume=False) to replace it, or choose another --out")
CHECKPOINT_POINTER = "latest.json"

STORE_KEYS = ("model", "weights", "prompts_hash", "n_images")


def data_identity(data: TrainingData, run: RunConfig | None = None) -> dict:
    """What makes two data sources the same for a resume (the store's path may differ: a moved store is fine);
    a step-spanning job adds its steps and how they are normalised (absent, so None, for one-step jobs)."""
    store = data.store or {}
    identity = {"site": data.site, "step": data.step, "split": data.split, "holdout": data.holdout,
                "rows": int(data.reader.num_rows),
                "width": int(data.reader.dim), **{f"store_{k}": store.get(k) for k in STORE_KEYS}}
    if data.steps:
        identity.update(steps=list(data.steps), step_normalization=(run or RunConfig()).step_normalization)
    return identity


def normalizer_hash(norm: Normalizer | StepNormalizers) -> str:
    h = hashlib.sha256(norm.kind.encode())
    for step, one in (norm.by_step.items() if isinstance(norm, StepNormalizers) else [("", norm)]):
        h.update(step.encode())
        for t in (one.mean, one.scale, one.rotation):
            h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def start_job(method: str, cfg, run: RunConfig, data: TrainingData, total_steps: int, normalization: str, seed: int):
    """Open the job's folder: (job, its finished dictionary or None, the checkpoint to resume or None, normaliser).

    The normaliser is the resumed job's, or a fresh fit on the training data (saved beside the checkpoints).
    """
    job = Job(job_settings(method, cfg, run), run, data, total_steps)
    finished, restored = job.open()
    if finished is not None:
        return job, finished, None, finished.normalizer
    normalizer = job.normalizer(restored, lambda: fit_normalizer(data.reader, normalization, run.norm_fit_tokens,
                                                                 run.min_tokens_per_dim, seed, run.step_normalization))
    return job, None, restored, normalizer


class Job:
    """Folder, resume check, checkpoints and logging of one training run (``run.out`` None: in memory)."""

    def __init__(self, settings: dict, run: RunConfig, data: TrainingData, total_steps: int):
        self.run = run
        self.settings = settings
        self.data = data_identity(data, run)
        self.total_steps = total_steps
        self.folder = Path(run.out) if run.out else None
        self.rank, self.world = rank_and_world()
        self.started = time.perf_counter()
        self._bar = None
        self._backend = None

    @property
    def ckpt_dir(self) -> Path | None:
        return self.folder / CHECKPOINT_DIR if self.folder else None

    # ---- start ---------------------------------------------------------------------------
    def identity(self) -> dict:
        """Recorded in the finished dictionary's meta: a rerun of the same job just loads it."""
        return {"settings": self.settings, "data": self.data, "total_steps": self.total_steps}

    def open(self) -> tuple[object | None, tuple[dict[str, torch.Tensor], dict] | None]:
        """(the finished dictionary of this job or None, the checkpoint to resume or None); see the module
        docstring. Every rank decides from the same files; then rank 0 wipes what is replaced."""
        if self.folder is None:
            return None, None
        finished, restored, replace = self._decide()
        if replace:
            self._sync()  # every rank has read the folder before rank 0 wipes it
            if self.rank == 0:
                self._wipe()
            self._sync()
        return finished, restored

    def _decide(self):
        talk = self.rank == 0
        if not self.run.resume:
            if talk and ((self.folder / CFG_FILE).exists() or (self.ckpt_dir / CHECKPOINT_POINTER).exists()):
                note(f"--no-resume: starting over in {self.folder}, replacing what it holds")
            return None, None, True
        saved = load_latest(self.ckpt_dir / CHECKPOINT_POINTER)
        if (self.folder / CFG_FILE).exists():
            meta = read_cfg(self.folder).get("difflens_meta", {})
            recorded = meta.get("job") or {}
            finished = meta.get("steps") == recorded.get("total_steps")
            if finished or saved is None:  # a dictionary stopped early (on_step) defers to its checkpoint
                what, label = ("a finished dictionary", "finished") if finished else ("a stopped dictionary", "saved")
                if not same_settings(self.folder, recorded, self.identity(), what=what, overwrite=self.run.overwrite,
                                     label=label, hint=REPLACE_HINT):
                    return None, None, True
                if finished:
                    if talk:
                        note(f"{self.folder} already holds this job's finished dictionary: loaded, not retrained")
                    return load_dictionary(self.folder), None, False
        if saved is None:
            return None, None, False
        recorded = {"settings": saved[1].get("settings", {}), "data": saved[1].get("data", {})}
        if not same_settings(self.folder, recorded, {"settings": self.settings, "data": self.data}, what="a checkpoint",
                             overwrite=self.run.overwrite, label="checkpoint", hint=REPLACE_HINT):
            return None, None, True
        return None, saved, False

    def _wipe(self) -> None:
        for name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        for name in (TRAIN_LOG, CFG_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def _sync(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def normalizer(self, restored: dict | None, fit) -> Normalizer | StepNormalizers:
        """The resumed job's normaliser (checked against its hash), or a fresh ``fit()`` saved beside the checkpoints."""
        if restored is not None:
            norm = load_normalizer(self.ckpt_dir, self.data["width"])
            want = restored[1].get("normalizer")
            if want is not None and normalizer_hash(norm) != want:
                raise ValueError(f"{self.ckpt_dir / NORMALIZER_FILE} does not match its checkpoint "
                                 f"(hash {normalizer_hash(norm)} != {want}); use --no-resume to start over")
            return norm
        norm = fit()
        if self.folder is not None and self.rank == 0:
            save_normalizer(norm, self.ckpt_dir)
        return norm

    # ---- during ----------------------------------------------------------------------------
    def checkpoint(self, step: int, tensors: Callable[[], dict[str, torch.Tensor]], position: dict,
                   norm: Normalizer) -> None:
        """Save ``tensors()`` (called only when a checkpoint is due) with the data position and the job's identity."""
        if self.folder is None or self.rank != 0 or not self.run.checkpoint_every:
            return
        if step % self.run.checkpoint_every or step >= self.total_steps:
            return
        info = {**position, "settings": self.settings, "data": self.data, "normalizer": normalizer_hash(norm)}
        save_checkpoint(self.ckpt_dir / CHECKPOINT_POINTER, step, tensors(), info)

    def open_log(self, initial: int, desc: str, config: dict) -> None:
        active = self.rank == 0
        if active and self.folder is not None:
            trim_log(self.folder / TRAIN_LOG, initial)
        self._bar = progress(total=self.total_steps, initial=initial, desc=desc, unit="step",
                             enabled=active and self.run.progress)
        if not active or self.run.logger == "none":
            return
        if self.run.logger == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ValueError("--logger wandb needs the wandb package (pip install wandb)") from err
            name = self.folder.name if self.folder else desc
            self._backend = wandb.init(project="difflens", name=name, config=config, resume="allow")
        elif self.run.logger == "tensorboard":
            if self.folder is None:
                raise ValueError("--logger tensorboard writes into the run folder: give out=")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("--logger tensorboard needs the tensorboard package (pip install tensorboard)") from err
            self._backend = SummaryWriter(str(self.folder / TENSORBOARD_DIR))

    def log(self, step: int, stats: dict) -> None:
        if self.rank != 0:
            return
        self._bar.update(1)
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k in ("fvu", "l0", "dead", "atoms")},
                              refresh=False)
        if step % self.run.log_every and step != self.total_steps:
            return
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / TRAIN_LOG, "a") as f:
                f.write(json.dumps({"step": step, **stats}) + "\n")
        if self._backend is not None and hasattr(self._backend, "add_scalar"):
            for k, v in stats.items():
                self._backend.add_scalar(k, v, step)
        elif self._backend is not None:
            self._backend.log(stats, step=step)

    def close_log(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._backend is not None:
            (getattr(self._backend, "close", None) or self._backend.finish)()

    def save(self, dictionary, steps_done: int) -> None:
        """Write the finished (or stopped) dictionary; a completed job's checkpoints are then no longer needed."""
        if self.folder is not None and self.rank == 0:
            save_dictionary(dictionary, self.folder)
            if steps_done >= self.total_steps:
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self._sync()  # every rank returns once the dictionary is on disk

    def seconds(self) -> float:
        return time.perf_counter() - self.started
