"""The capture runner: generate images chunk by chunk, record chosen sites at chosen steps,
write rows, traces and images into an activation store (`difflens.store`).

Images are grouped into fixed chunks of `batch_size` consecutive image ids; chunk c is
generated as one batch by rank c % world_size, so a torchrun capture produces exactly the
shards a single process would. Completed chunks are skipped on rerun (resume after kill -9).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import operator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from difflens.adapters import Capture, LoadOptions, ModelAdapter, SiteInfo, load_adapter
from difflens.adapters.base import CONTROLS, weights_fingerprint
from difflens.distributed import DistContext, init_from_env
from difflens.store import ChunkRows, EntrySpec, StoreWriter, layout
from difflens.store.split import check_fraction


@dataclass
class CaptureConfig:
    """Settings of one capture. None = the model's default."""

    out: str
    """store folder; rerunning the same capture resumes it (in-memory captures leave it empty)"""
    model: str = "embedded"
    """model name: embedded, embedded-rich, embedded-tiny, embedded:PATH, flux-schnell, flux-dev, flux:ID_OR_PATH,
    sdxl-turbo, sdxl, sdxl:ID_OR_PATH, flux-tiny, sdxl-tiny"""
    sites: list[str] | None = None
    """comma-separated site names or globs, e.g. 'double.*.img.out'; None: the model's main sites"""
    steps_to_record: list[int] | str | None = None
    """0-based denoising steps to record, e.g. 0 or 0,3,7, or all; None: step 0"""
    prompts: str = "world"
    """'world' (captions of the shapes world the model draws; 'world:classic' or 'world:rich' to choose) or a text
    file with one prompt per line"""
    n_images: int | None = None
    """number of images; None: the prompt file's line count, or 256 world prompts"""
    resolution: int | None = None
    """image size in px; None: the model's"""
    num_steps: int | None = None
    """denoising steps; None: the model's"""
    guidance: float | None = None
    """guidance scale; None: the model's"""
    seed: int = 0
    """image i gets seed + i; world prompts are drawn with this seed"""
    batch_size: int = 8
    """images per chunk: one generation batch, one shard per site and step"""
    store_dtype: Literal["float16", "bfloat16"] | None = None
    """stored row dtype; None: the model's (bfloat16 for FLUX)"""
    save_images: bool = field(default=True, metadata={"aliases": ["--images"]})
    """save the generated images in the store"""
    holdout: float = 0.1
    """fraction of images held out of training, chosen by image (0: no split); recorded in store.json at
    finalize with split seed 0, so not a capture setting: a rerun may change it, and `difflens capture split`
    re-splits a finished store"""
    control: Literal["none", "random-init"] = "none"
    """none, or random-init: record a randomly initialised copy of the denoiser fed the trained model's own inputs
    at every step (x_t, t, text embeddings, ids...) while the trained model generates the images (a control: what
    a dictionary finds there comes from the inputs, not from what the model learned); images, and so labels,
    are the trained model's"""
    control_seed: int = 0
    """seed of the random-init copy's weights (with --control random-init)"""
    load: LoadOptions = field(default_factory=LoadOptions)
    """how the model is loaded (dtype, device, CPU offload, quantization)"""
    progress: bool = True
    """show a progress bar"""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_fraction(self.holdout)
        if self.control not in CONTROLS:
            raise ValueError(f"--control must be one of {', '.join(CONTROLS)}, got {self.control!r}")
        if isinstance(self.control_seed, bool) or not isinstance(self.control_seed, int) or self.control_seed < 0:
            raise ValueError(f"--control-seed must be an integer >= 0, got {self.control_seed!r}")


@contextmanager
def capture_control(cfg: CaptureConfig, adapter: ModelAdapter):
    """The capture's control for the duration of the block: yields the settings that identify it ({} for
    control 'none'; else control, control_seed and control_weights, the random-init copy's fingerprint) with
    the adapter's teacher-forced control active (`ModelAdapter.teacher_forced_control`)."""
    if cfg.control == "none":
        yield {}
        return
    with adapter.teacher_forced_control(cfg.control_seed) as copy:
        yield {"control": cfg.control, "control_seed": int(cfg.control_seed),
               "control_weights": weights_fingerprint({"denoiser": copy})}


def resolve_prompts(source: str | list[str], n_images: int | None, seed: int, world: str = "classic") -> list[dict]:
    """[{"image_id", "prompt", "seed"}]; prompts from the shapes world, a file or a list, cycled to n_images.

    "world" draws captions of ``world``; "world:classic" / "world:rich" name the world."""
    if n_images is not None and n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {n_images}")
    if isinstance(source, (list, tuple)):
        prompts = [str(p) for p in source]
        if not prompts:
            raise ValueError("the prompt list is empty")
    elif source == "world" or source.startswith("world:"):
        from difflens.world import WORLDS, world_prompts

        world = source.split(":", 1)[1] if ":" in source else world
        if world not in WORLDS:
            raise ValueError(f"unknown shapes world {world!r} in --prompts {source}; worlds: {', '.join(WORLDS)}")
        prompts = world_prompts(n_images or 256, seed=seed, split="train", world=world)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path} (use --prompts world for the shapes world)")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts file {path} holds no prompts")
    n = n_images or len(prompts)
    return [{"image_id": i, "prompt": prompts[i % len(prompts)], "seed": seed + i} for i in range(n)]


def resolve_sites(adapter: ModelAdapter, requested: list[str] | None, resolution: int) -> list:
    """Site names (globs allowed) -> SiteInfo list, in the order given."""
    available = adapter.sites(resolution)
    if not requested:
        return [adapter.site(s, resolution) for s in adapter.default_sites]
    out = []
    for pattern in requested:
        if any(c in pattern for c in "*?["):
            matches = [s for s in available if fnmatch.fnmatchcase(s.name, pattern)]
            if not matches:
                raise ValueError(f"--sites pattern {pattern!r} matches no site of {adapter.name}")
        else:
            matches = [adapter.site(pattern, resolution)]
        out += [m for m in matches if m not in out]
    return out


def prompts_hash(prompts: list[dict]) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()


class _ChunkRecorder:
    """Capture callback: keeps each (site, step)'s acts_BTD of the current chunk, cast for storage."""

    def __init__(self, store_dtype: str):
        self.dtype_name = store_dtype
        self.dtype = layout.DTYPES[store_dtype][1]
        self.acts: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, site: str, step: int, acts_BTD: torch.Tensor) -> None:
        cpu = acts_BTD.to(device="cpu", dtype=self.dtype)
        if cpu.data_ptr() == acts_BTD.data_ptr():
            cpu = cpu.clone()  # never keep a view of the model's live tensor
        # fail at the step that overflows, before the rest of the chunk is generated
        layout.check_finite(layout.to_storage(cpu, self.dtype_name), acts_BTD, self.dtype_name, f"{site} step {step}")
        self.acts[(site, step)] = cpu


@dataclass
class CapturePlan:
    """A capture's settings resolved against the model: what a store capture and an in-memory one both run."""

    prompts: list[dict]
    sites: list[SiteInfo]
    steps: list[int]
    resolution: int
    num_steps: int
    guidance: float | None


def resolve_steps(requested: list[int] | str | None, num_steps: int) -> list[int]:
    """0-based steps to record: the given ones (validated), 'all', or None for step 0."""
    if isinstance(requested, str) and requested.strip() == "all":
        return list(range(num_steps))
    usage = f"--steps-to-record takes step indices such as 0 or 0,3,7, or all; got {requested!r}"
    if isinstance(requested, str):
        raise ValueError(usage)
    if requested is not None and not requested:
        raise ValueError(usage)
    try:
        steps = sorted({operator.index(s) for s in (requested if requested is not None else [0])})
    except TypeError:
        raise ValueError(usage) from None
    bad = [s for s in steps if not 0 <= s < num_steps]
    if bad:
        raise ValueError(f"--steps-to-record {bad} outside 0..{num_steps - 1} ({num_steps} denoising steps)")
    return steps


def plan_capture(cfg: CaptureConfig, adapter: ModelAdapter) -> CapturePlan:
    """Resolve prompts, sites, steps, resolution, step count and guidance (model defaults where unset)."""
    cfg.validate()
    resolution = adapter.default_resolution if cfg.resolution is None else cfg.resolution
    num_steps = adapter.default_num_steps if cfg.num_steps is None else cfg.num_steps
    return CapturePlan(
        prompts=resolve_prompts(cfg.prompts, cfg.n_images, cfg.seed, adapter.world),
        sites=resolve_sites(adapter, cfg.sites, resolution),
        steps=resolve_steps(cfg.steps_to_record, num_steps),
        resolution=resolution,
        num_steps=num_steps,
        guidance=adapter.default_guidance if cfg.guidance is None else cfg.guidance,
    )


def run_capture(cfg: CaptureConfig, adapter: ModelAdapter | None = None) -> Path:
    """Run (or resume) a capture into cfg.out; returns the store path. Works under torchrun."""
    ctx = init_from_env(cfg.load.device)
    try:
        return _run(cfg, adapter, ctx)
    finally:
        ctx.close()


def _run(cfg: CaptureConfig, adapter: ModelAdapter | None, ctx: DistContext) -> Path:
    cfg.validate()  # before loading a model, let alone generating
    if adapter is None:
        load = cfg.load
        if ctx.world_size > 1 and torch.cuda.is_available() and (load.device or "cuda").startswith("cuda"):
            load = LoadOptions(**{**asdict(load), "device": f"cuda:{ctx.local_rank}"})
        adapter = load_adapter(cfg.model, load)
    plan = plan_capture(cfg, adapter)
    with capture_control(cfg, adapter) as control:
        return _capture_to_store(cfg, adapter, ctx, plan, control)


def _capture_to_store(cfg: CaptureConfig, adapter: ModelAdapter, ctx: DistContext, plan: CapturePlan,
                      control: dict) -> Path:
    """Generate and record `plan` into cfg.out; `control`: the settings of `capture_control` (active now)."""
    prompts, sites, steps = plan.prompts, plan.sites, plan.steps
    store_dtype = cfg.store_dtype or adapter.default_store_dtype
    writer = StoreWriter(cfg.out, dtype=store_dtype)
    recorder = _ChunkRecorder(store_dtype)
    phash = prompts_hash(prompts)
    resolution, num_steps, guidance = plan.resolution, plan.num_steps, plan.guidance
    # the control's keys only when there is one, so stores captured before controls existed still resume
    settings = {
        "model": adapter.name, "weights": adapter.weights_fingerprint(), "sites": [s.name for s in sites],
        "steps": steps, "resolution": resolution, "num_steps": num_steps, "guidance": guidance, "seed": cfg.seed,
        "batch_size": cfg.batch_size, "dtype": store_dtype, "n_images": len(prompts), "prompts_hash": phash,
        "save_images": cfg.save_images, **control,
    }
    # rank 0 creates (or checks and cleans) the store before any rank writes into it
    error = None
    if ctx.is_main:
        try:
            writer.prepare(settings, prompts)
        except (ValueError, FileNotFoundError) as err:
            error = err
    if not ctx.all_ok(error is None):
        raise error or ValueError("rank 0 could not prepare the store (see its error)")
    if not ctx.is_main:
        writer.check_config(settings)

    n_chunks = math.ceil(len(prompts) / cfg.batch_size)
    done = writer.completed_chunks()
    mine = [c for c in range(n_chunks) if c % ctx.world_size == ctx.rank and c not in done]
    capture = Capture([s.name for s in sites], recorder, steps)
    bar = _progress(len(mine), cfg.progress and ctx.is_main, f"capture {adapter.name}")
    # Chunk c's files are written here, but its commit (waiting for the disk, then the ledger marker) runs
    # on a background thread while chunk c+1 generates. CPU work stays on this thread: a busy second
    # thread would stall torch's own worker threads. A commit error surfaces before the next one starts.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="difflens-store-commit") as pool:
        pending = None
        for c in mine:
            batch = prompts[c * cfg.batch_size : (c + 1) * cfg.batch_size]
            ids = [p["image_id"] for p in batch]
            recorder.acts = {}
            images = adapter.generate([p["prompt"] for p in batch], [p["seed"] for p in batch], num_steps=num_steps,
                                      resolution=resolution, guidance=guidance, capture=capture)
            rows = {}
            for s in sites:
                for step in steps:
                    acts_BTD = recorder.acts.get((s.name, step))
                    if acts_BTD is None:
                        raise RuntimeError(f"site {s.name} was not reached at step {step} (hook did not fire)")
                    B, T, D = acts_BTD.shape
                    rows[(s.name, step)] = ChunkRows(acts_BTD.reshape(B * T, D), np.repeat(ids, T),
                                                     np.tile(np.arange(T), B))
            marker = writer.stage_chunk(c, ids, images if cfg.save_images else None, rows)
            if pending is not None:
                pending.result()
                bar.update(1)
            pending = pool.submit(writer.commit_chunk, marker)
        if pending is not None:
            pending.result()
            bar.update(1)
    bar.close()

    ctx.barrier()
    if ctx.is_main:
        entries = [EntrySpec(s.name, step, s.dim, s.stream, s.tokens, s.grid) for s in sites for step in steps]
        meta = {k: settings[k] for k in ("model", "weights", "n_images", "prompts_hash", "resolution", "num_steps",
                                         "guidance", "seed")}
        meta.update({"control": cfg.control, **control})
        writer.finalize(entries, n_chunks, meta, holdout=cfg.holdout)
    ctx.barrier()
    return Path(cfg.out)


def _progress(total: int, enabled: bool, desc: str):
    """Chunk progress bar; throttled to a few lines when stderr is a log file or pipe."""
    from ..progress import progress

    return progress(total, desc, unit="chunk", enabled=enabled)
