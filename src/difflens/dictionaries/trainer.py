"""Training loops: TopK SAE (Adam, data-parallel) and ITDA, streamed from a reader.

Defaults follow the FLUX paper (seed 002): Adam β = (0, 0.99), lr 2e-4 constant after a
50-step linear warm-up, gradient-norm clip 10, AuxK with k_aux 64 and coefficient 1/32.
A latent is *dead* when it has not fired for ``dead_window_tokens`` tokens.

Loss: ``FVU = Σ‖z − ẑ‖² / Σ‖z − mean(z)‖²`` over the (global) batch in the normalised space,
plus ``auxk_coef × ‖ê_aux − (z − ẑ)‖² / Σ‖z − mean(z)‖²``.

Resume is exact: the checkpoint holds weights, Adam moments and step counts, dead-latent
counters, RNG states and the data position (epoch, batch index); data order is a pure function
of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.

Data parallel: under ``torchrun`` every rank reads the same global batch, trains on its
interleaved slice, and gradients (and dead-latent counts) are summed with all-reduce, so N ranks
compute the same update as one process up to float summation order.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from .base import check_activations
from .checkpoint import load_latest, load_optimizer_tensors, optimizer_tensors, save_checkpoint, set_rng_state
from .io import load_normalizer, save_dictionary, save_normalizer
from .itda import ITDA, ITDAConfig, relative_loss
from .normalization import Normalizer
from .sparse_ops import sparse_decode
from .topk_sae import SAEConfig, TopKSAE


# Seconds to sleep after each SAE step: lets the crash-safety test kill a run mid-way.
_THROTTLE_S = float(os.environ.get("DIFFLENS_TRAIN_THROTTLE_S", "0"))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.

    Same result as torch's clip_grad_norm_, but skips the pass over every gradient when no clipping
    is needed (the usual case), which is ~1 % of an SAE step on CPU.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm

@dataclass
class SAETrainConfig:
    """Optimisation settings for a TopK SAE (FLUX-paper defaults)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    warmup_steps: int = 50
    grad_clip: float = 10.0
    batch_size: int = 4096
    num_tokens: int = 10_000_000
    k_aux: int = 64
    auxk_coef: float = 1 / 32
    dead_window_tokens: int = 1_000_000
    seed: int = 0
    autocast: bool = True  # bf16 autocast on CUDA


@dataclass
class RunConfig:
    """What every training run shares: data, normalisation fit, checkpoints, logging."""

    out: str = "runs/train"
    site: str = "site"
    step: int | None = None
    norm_fit_tokens: int = 1_000_000
    min_tokens_per_dim: float = 10.0
    checkpoint_every: int = 200
    log_every: int = 10
    device: str = "auto"
    logger: str = "none"  # none | wandb | tensorboard
    progress: bool = True
    meta: dict = field(default_factory=dict)

    def folder(self) -> Path:
        return Path(self.out) / self.site


# ---------------------------------------------------------------------------------- helpers
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed(device: torch.device) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    return torch.device(name)


def batch_stream(reader, batch_size: int, seed: int, start_epoch: int = 0, start_batch: int = 0) -> Iterator:
    """Endless shuffled (epoch, batch_index, acts_BN, row_ids_B); resumes at (epoch, batch)."""
    if reader.num_rows < batch_size:
        raise ValueError(f"the store holds {reader.num_rows} rows, fewer than one batch of {batch_size}; lower --batch-size")
    epoch = start_epoch
    while True:
        it = reader.iter_batches(batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True)
        for i, (acts, rows) in enumerate(it):
            if epoch == start_epoch and i < start_batch:
                continue
            yield epoch, i, acts, rows
        epoch += 1


def fit_normalizer(reader, kind: str, run: RunConfig, seed: int) -> Normalizer:
    """Stream up to ``norm_fit_tokens`` tokens (at least 10 × width) into the normalisation fit."""
    if kind == "none":
        return Normalizer(reader.dim, "none")
    rank, world = dist_info()
    budget = min(reader.num_rows, max(run.norm_fit_tokens, int(run.min_tokens_per_dim * reader.dim)))

    def mine():
        seen = 0
        for acts, _ in reader.iter_batches(8192, shuffle=True, seed=seed + 7919, epoch=0):
            acts = acts[: budget - seen]
            seen += acts.shape[0]
            check_activations(acts, reader.dim)
            yield acts[rank::world].float()  # each rank accumulates an interleaved share
            if seen >= budget:
                return

    return Normalizer.fit(mine(), reader.dim, kind, min_tokens_per_dim=run.min_tokens_per_dim)


class Logger:
    """Progress bar plus optional wandb / tensorboard (only when installed), rank 0 only."""

    def __init__(self, run: RunConfig, total: int, initial: int, config: dict):
        rank, _ = dist_info()
        self.active = rank == 0
        self.bar = tqdm(total=total, initial=initial, disable=not (self.active and run.progress), desc=run.site, unit="step")
        self.backend = None
        self.jsonl = run.folder() / "train_log.jsonl"
        if not self.active or run.logger == "none":
            return
        if run.logger == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ValueError("--logger wandb needs the wandb package (pip install wandb)") from err
            self.backend = wandb.init(project="difflens", name=f"{Path(run.out).name}/{run.site}", config=config, resume="allow")
        elif run.logger == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("--logger tensorboard needs the tensorboard package (pip install tensorboard)") from err
            self.backend = SummaryWriter(str(run.folder() / "tensorboard"))
        else:
            raise ValueError(f"unknown logger {run.logger!r}; choose none, wandb or tensorboard")

    def log(self, step: int, stats: dict, write: bool) -> None:
        if not self.active:
            return
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k in ("fvu", "l0", "dead", "atoms")})
        if not write:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **stats}) + "\n")
        if self.backend is not None and hasattr(self.backend, "add_scalar"):
            for k, v in stats.items():
                self.backend.add_scalar(k, v, step)
        elif self.backend is not None:
            self.backend.log(stats, step=step)

    def close(self) -> None:
        self.bar.close()
        if self.backend is not None:
            (getattr(self.backend, "close", None) or self.backend.finish)()


# ---------------------------------------------------------------------------------- SAE
class SAEState:
    """An SAE with its optimiser and dead-latent counters; :meth:`train_step` does one update."""

    def __init__(self, sae: TopKSAE, cfg: SAETrainConfig, opt: torch.optim.Optimizer):
        self.sae, self.cfg, self.opt = sae, cfg, opt
        self.step = 0
        self.tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=sae.W_dec.device)

    @classmethod
    def create(cls, sae: TopKSAE, cfg: SAETrainConfig) -> "SAEState":
        kwargs = {}
        if sae.W_dec.device.type in ("cpu", "cuda"):
            kwargs["fused"] = True
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), **kwargs)
        return cls(sae, cfg, opt)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.cfg.dead_window_tokens

    def train_step(self, z_BN: torch.Tensor, total_variance: torch.Tensor, global_tokens: int | None = None) -> dict:
        """One update on this rank's slice ``z_BN`` (normalised); ``total_variance`` is the global batch's."""
        sae, cfg = self.sae, self.cfg
        _, world = dist_info()
        dead_idx = torch.nonzero(self.dead_mask()).squeeze(1) if cfg.k_aux > 0 else None
        device_type = z_BN.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.autocast and device_type == "cuda"):
            out = sae.forward_train(z_BN, dead_idx, cfg.k_aux)
        err_BN = z_BN - out.recon_BN.float()
        l2 = err_BN.pow(2).sum()
        loss = l2 / total_variance
        aux_l2 = torch.zeros((), device=z_BN.device)
        if out.aux_indices_BA.shape[1] > 0:
            aux_BN = sparse_decode(out.aux_values_BA, out.aux_indices_BA, sae.W_dec)
            aux_l2 = (aux_BN.float() - err_BN.detach()).pow(2).sum()
            loss = loss + cfg.auxk_coef * aux_l2 / total_variance
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in sae.parameters()]
        fired = torch.bincount(out.indices_BK[out.values_BK > 0], minlength=sae.num_latents)
        sums = torch.stack([l2.detach(), aux_l2.detach(), (out.values_BK > 0).sum().float()])
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            dist.all_reduce(fired)
            dist.all_reduce(sums)
        sae.remove_parallel_decoder_grad()
        clip_grad_norm(params, cfg.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.step()
        sae.normalize_decoder()
        n_tokens = global_tokens if global_tokens is not None else z_BN.shape[0] * world
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired > 0] = 0
        self.step += 1
        tv = float(total_variance)
        return {
            "fvu": float(sums[0]) / tv,
            "auxk": float(sums[1]) / tv,
            "l0": float(sums[2]) / n_tokens,
            "dead": float(self.dead_mask().float().mean()),
            "lr": self.lr_at(self.step - 1),
        }

    # ---- checkpoint tensors ----
    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"model.{k}": v for k, v in self.sae.state_dict().items() if not k.startswith("normalizer.")},
            **optimizer_tensors(self.opt),
            "tokens_since_fired": self.tokens_since_fired,
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.sae.named_parameters():
                p.copy_(tensors[f"model.{name}"])
        load_optimizer_tensors(self.opt, tensors)
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])


def _sae_meta(run: RunConfig, sae_cfg: SAEConfig, cfg: SAETrainConfig, extra: dict) -> dict:
    return {"site": run.site, "step": run.step, **run.meta, "sae": sae_cfg.to_dict(), "train": asdict(cfg), **extra}


def train_sae(reader, sae_cfg: SAEConfig, cfg: SAETrainConfig, run: RunConfig, resume: bool = True) -> TopKSAE:
    """Train a TopK SAE on ``reader``'s rows; writes ``<out>/<site>/`` and returns the SAE."""
    device = pick_device(run.device)
    maybe_init_distributed(device)
    rank, world = dist_info()
    folder = run.folder()
    ckpt_dir = folder / "checkpoint"
    sae_cfg = sae_cfg.resolve(reader.dim)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the number of ranks ({world})")
    state_saved = load_latest(ckpt_dir) if resume else None
    if state_saved is not None:
        normalizer = load_normalizer(ckpt_dir, reader.dim)
    else:
        normalizer = fit_normalizer(reader, sae_cfg.normalization, run, cfg.seed)
        if rank == 0:
            save_normalizer(normalizer, ckpt_dir)
    sae = TopKSAE(reader.dim, sae_cfg, normalizer=normalizer, seed=cfg.seed).to(device)
    state = SAEState.create(sae, cfg)
    total_steps = max(1, math.ceil(cfg.num_tokens / cfg.batch_size))
    epoch = batch_idx = 0
    if state_saved is not None:
        tensors, info = state_saved
        state.load_tensors({k: v.to(device) if not k.startswith("rng.") else v for k, v in tensors.items()})
        set_rng_state(tensors)
        state.step, epoch, batch_idx = info["step"], info["epoch"], info["next_batch"]
    logger = Logger(run, total_steps, state.step, _sae_meta(run, sae_cfg, cfg, {}))
    stats: dict = {}
    t0 = time.perf_counter()
    initialised = state.step > 0
    stream = batch_stream(reader, cfg.batch_size, cfg.seed, epoch, batch_idx)
    while state.step < total_steps:
        epoch, batch_idx, acts, _ = next(stream)
        check_activations(acts, reader.dim)
        z = sae.normalizer.normalize(acts.float().to(device, non_blocking=True))
        if not initialised:
            with torch.no_grad():  # start the decoder bias at the data mean (normalised space)
                sae.b_dec.copy_(z.mean(0))
            initialised = True
        total_variance = (z - z.mean(0)).pow(2).sum().clamp_min(1e-12)
        stats = state.train_step(z[rank::world], total_variance, global_tokens=z.shape[0])
        logger.log(state.step, stats, write=state.step % run.log_every == 0 or state.step == total_steps)
        if run.checkpoint_every and state.step % run.checkpoint_every == 0 and state.step < total_steps and rank == 0:
            save_checkpoint(ckpt_dir, state.step, state.tensors(), {"epoch": epoch, "next_batch": batch_idx + 1})
        if _THROTTLE_S:
            time.sleep(_THROTTLE_S)
    logger.close()
    if rank == 0:
        extra = {"tokens": state.step * cfg.batch_size, "final": stats, "seconds": time.perf_counter() - t0}
        save_dictionary(sae.cpu(), folder, meta=_sae_meta(run, sae_cfg, cfg, extra))
        sae.to(device)
    return sae


# ---------------------------------------------------------------------------------- ITDA
@dataclass
class ITDATrainConfig:
    batch_size: int = 4096
    num_tokens: int = 1_000_000
    seed: int = 0


def train_itda(reader, itda_cfg: ITDAConfig, cfg: ITDATrainConfig, run: RunConfig, resume: bool = True) -> ITDA:
    """Grow an ITDA dictionary over the stream (single process); writes ``<out>/<site>/``."""
    device = pick_device(run.device)
    if dist_info()[1] > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("ITDA training is sequential; run it in one process (not under torchrun)")
    folder = run.folder()
    ckpt_dir = folder / "checkpoint"
    saved = load_latest(ckpt_dir) if resume else None
    if saved is not None:
        normalizer = load_normalizer(ckpt_dir, reader.dim)
    else:
        normalizer = fit_normalizer(reader, itda_cfg.normalization, run, cfg.seed)
        save_normalizer(normalizer, ckpt_dir)
    itda = ITDA(reader.dim, itda_cfg, normalizer=normalizer).to(device)
    step = epoch = batch_idx = 0
    if saved is not None:
        tensors, info = saved
        from .itda import PROVENANCE_KEYS

        itda.load_atoms(tensors["atoms"].to(device), {k: tensors[f"provenance.{k}"] for k in PROVENANCE_KEYS})
        set_rng_state(tensors)
        step, epoch, batch_idx = info["step"], info["epoch"], info["next_batch"]
    total_steps = max(1, math.ceil(cfg.num_tokens / cfg.batch_size))
    logger = Logger(run, total_steps, step, {"itda": itda_cfg.to_dict(), "train": asdict(cfg)})
    stream = batch_stream(reader, min(cfg.batch_size, reader.num_rows), cfg.seed, epoch, batch_idx)
    t0 = time.perf_counter()
    stats: dict = {}
    while step < total_steps:
        epoch, batch_idx, acts, rows = next(stream)
        check_activations(acts, reader.dim)
        z = itda.normalizer.normalize(acts.float().to(device))
        if itda.size == 0:
            _add(itda, reader, z[:1], rows[:1])
        codes = itda.encode_normalized(z)
        recon = itda.decode_normalized(codes)
        loss_B = relative_loss(z, recon)
        chosen = itda.select_new_atoms(z, loss_B)
        added = _add(itda, reader, z[chosen], rows[chosen.cpu()])
        step += 1
        fvu = float((z - recon).pow(2).sum() / (z - z.mean(0)).pow(2).sum().clamp_min(1e-12))
        stats = {"fvu": fvu, "l0": float(codes.l0().float().mean()), "atoms": itda.size, "added": added}
        logger.log(step, stats, write=step % run.log_every == 0 or step == total_steps)
        if run.checkpoint_every and step % run.checkpoint_every == 0 and step < total_steps:
            tensors = {"atoms": itda.atoms, **{f"provenance.{k}": v for k, v in itda.provenance.items()}}
            save_checkpoint(ckpt_dir, step, tensors, {"epoch": epoch, "next_batch": batch_idx + 1})
    logger.close()
    meta = {"site": run.site, "step": run.step, **run.meta, "train": asdict(cfg), "tokens": step * cfg.batch_size,
            "final": stats, "seconds": time.perf_counter() - t0}
    save_dictionary(itda.cpu(), folder, meta=meta)
    return itda


def _add(itda: ITDA, reader, z_BN: torch.Tensor, rows_B: torch.Tensor) -> int:
    if rows_B.numel() == 0:
        return 0
    trace = reader.trace(rows_B)
    prov = {"row_id": rows_B, **{k: torch.as_tensor(trace[k]) for k in ("image_id", "step", "token_row", "token_col")}}
    return itda.add_atoms(z_BN, prov)
