"""Training a TopK SAE (or another family, ``sae_families``), read top to bottom: data -> job (resume check) ->
normaliser -> SAE -> steps -> files.

Loss per step, over the global batch::

    FVU = Σ w·(z − ẑ)² / Σ w·(z − mean z)²   +   auxk_coef × Σ w·(ê_aux − (z − ẑ))² / Σ w·(z − mean z)²

Family terms: Matryoshka adds the FVU of each smaller prefix's reconstruction (the logged ``fvu`` stays the
full dictionary's; ``fvu_prefix<i>`` each prefix's); JumpReLU adds ``l0_coef × (L0 / k − 1)²`` with L0 the
mean active latents per token (straight-through gradient to the thresholds), and after each step shifts all its
log-thresholds by ``l0_tracking`` × log(L0 / k); BatchTopK (and Matryoshka on it) updates its inference threshold
after each step.

with z the normalised input. ``loss_space="input"``: w = 1 (the error the SAE sees). ``"residual"``:
w = scale² of the normaliser, which is exactly the squared error after mapping back to residual space
(the PCA rotation is orthogonal), so the objective is the FVU users read while the encoder keeps the
conditioning benefit of whitened inputs.

Resume is exact: the checkpoint holds weights, Adam moments, dead-latent counters, RNG states and the
data position; data order is a pure function of (seed, epoch). Under torchrun every rank reads the same
global batch, trains on its interleaved slice, and gradients (and dead-latent counts) are all-reduced, so
N ranks compute the same update as one process up to float summation order.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...checkpoint import load_optimizer_tensors, optimizer_tensors, restore_rng
from ...distributed import init_from_env, pick_device, rank_and_world
from ...locks import output_lock
from ..base import check_activations
from ..sparse_ops import sparse_decode
from ..sae_families import make_sae
from ..topk_sae import TopKSAE
from ..normalization import StepNormalizers, loss_weights, normalize_rows
from .config import RunConfig, SAETrainConfig
from .data import batch_stream, resolve_data, row_steps
from .job import start_job

# Seconds to sleep after each step: lets the crash-safety test kill a run mid-way.
_THROTTLE_S = float(os.environ.get("DIFFLENS_TRAIN_THROTTLE_S", "0"))

StepCallback = Callable[[int, TopKSAE, dict], "bool | None"]


def train_sae(source, cfg: SAETrainConfig | None = None, run: RunConfig | None = None, *, site: str | None = None,
              step: int | None = None, split: str = "auto", on_step: StepCallback | None = None) -> TopKSAE:
    """Train a TopK SAE (or the family of ``cfg``'s class, see ``family_configs``) on ``source`` (see :func:`~.data.resolve_data`); writes ``run.out`` when given.

    ``on_step(step, sae, stats)`` runs after every optimiser step (rank 0); returning True stops training.
    The returned SAE carries ``meta`` (site, step, store identity, split, config). ``run.out`` is locked against
    other writers for the run (rank 0 holds the lock); what it already holds is reused or refused (see ``job``).
    """
    cfg, run = cfg or SAETrainConfig(), run or RunConfig()
    cfg.validate()
    data = resolve_data(source, site, step, split)
    device = pick_device(run.device)
    ctx = init_from_env(str(device), backend="nccl" if device.type == "cuda" else "gloo")
    try:
        with output_lock(run.out if rank_and_world()[0] == 0 else None):
            return _train(cfg, run, data, device, on_step)
    finally:
        ctx.close()  # a torchrun rank that exits with gloo still joined can abort ("terminate called ...")


def _train(cfg: SAETrainConfig, run: RunConfig, data, device: torch.device, on_step) -> TopKSAE:
    reader = data.reader
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the number of ranks ({world})")
    cfg = cfg.resolved(reader.dim)  # the lr used (size-scaled default when none given) is what the job records
    arch = cfg.architecture(reader.dim)
    total_steps = max(1, math.ceil(cfg.num_tokens / cfg.batch_size))

    job, finished, restored, normalizer = start_job("sae", cfg, run, data, total_steps, arch.normalization,
                                                     cfg.seed)
    if finished is not None:
        return finished
    sae = make_sae(reader.dim, arch, normalizer=normalizer, seed=cfg.seed).to(device)
    state = SAEState.create(sae, cfg)
    epoch = batch_idx = 0
    if restored is not None:
        tensors, info = restored
        state.load_tensors({k: v.to(device) if not k.startswith("rng.") else v for k, v in tensors.items()})
        restore_rng(tensors)
        state.step, epoch, batch_idx = info["step"], info["epoch"], info["next_batch"]
    meta = {**data.origin(), "method": "sae", "arch": arch.arch, "sae": arch.to_dict(), "train": asdict(cfg), "job": job.identity()}
    sae.meta = meta  # known from the start, so on_step callbacks can evaluate on the right store
    job.open_log(state.step, data.site or "sae", meta)

    stats: dict = {}
    z = None  # the last normalised batch
    initialised = state.step > 0
    per_row_weights = cfg.loss_space == "residual" and isinstance(normalizer, StepNormalizers)
    weights_D = loss_weights(normalizer).to(device) if cfg.loss_space == "residual" and not per_row_weights else None
    stream = batch_stream(reader, cfg.batch_size, cfg.seed, epoch, batch_idx)
    while state.step < total_steps:
        epoch, batch_idx, acts, rows = next(stream)
        check_activations(acts, reader.dim)
        steps_B = row_steps(reader, rows)  # a step-spanning dictionary's rows may each have their normaliser
        z = normalize_rows(normalizer, acts.float().to(device, non_blocking=True), steps_B)
        if per_row_weights:  # each row weighed by its own step's scale
            weights_D = loss_weights(normalizer, steps_B).to(device)
        if not initialised:
            sae.initialise(z)  # data-dependent start (decoder bias at the mean, normalised space)
            initialised = True
        centred_sq = (z - z.mean(0)).pow(2)
        total_variance = (centred_sq if weights_D is None else centred_sq * weights_D).sum().clamp_min(1e-12)
        stats = state.train_step(z[rank::world], total_variance, global_tokens=z.shape[0],
                                 weights_D=weights_D if weights_D is None or weights_D.ndim == 1 else weights_D[rank::world])
        job.log(state.step, stats)
        job.checkpoint(state.step, state.tensors, {"epoch": epoch, "next_batch": batch_idx + 1}, normalizer)
        if on_step is not None and rank == 0 and on_step(state.step, sae, stats):
            break
        if _THROTTLE_S:
            time.sleep(_THROTTLE_S)
    if z is not None:
        sae.calibrate(z)  # threshold families: inference keeps k latents a token on average
    job.close_log()
    sae.meta = {**meta, "steps": state.step, "tokens": state.step * cfg.batch_size, "final": stats, "seconds": job.seconds()}
    job.save(sae, state.step)
    return sae


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


class SAEState:
    """An SAE with its optimiser and dead-latent counters; :meth:`train_step` does one update."""

    def __init__(self, sae: TopKSAE, cfg: SAETrainConfig, opt: torch.optim.Optimizer):
        self.sae, self.cfg, self.opt = sae, cfg, opt
        self.step = 0
        self.tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=sae.W_dec.device)

    @classmethod
    def create(cls, sae: TopKSAE, cfg: SAETrainConfig) -> "SAEState":
        kwargs = {"fused": True} if sae.W_dec.device.type in ("cpu", "cuda") else {}
        cfg = cfg.resolved(sae.d_in)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), **kwargs)
        return cls(sae, cfg, opt)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.cfg.dead_window_tokens

    def train_step(self, z_BD: torch.Tensor, total_variance: torch.Tensor, global_tokens: int | None = None,
                   weights_D: torch.Tensor | None = None) -> dict:
        """One update on this rank's slice ``z_BD`` (normalised); ``total_variance`` is the global batch's
        (weighted like the loss). ``weights_D``: per-dimension loss weights (None: all 1)."""
        sae, cfg = self.sae, self.cfg
        _, world = rank_and_world()
        dead_idx = torch.nonzero(self.dead_mask()).squeeze(1) if cfg.k_aux > 0 else None
        device_type = z_BD.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.autocast and device_type == "cuda"):
            out = sae.forward_train(z_BD, dead_idx, cfg.k_aux)
        def weighted_l2(target_BD: torch.Tensor, pred_BD: torch.Tensor) -> torch.Tensor:
            """Σ w·(target − pred)²; unweighted: mse_loss's fused kernels (half the passes over B × D)."""
            if weights_D is None:
                return F.mse_loss(pred_BD.float(), target_BD, reduction="sum")
            return ((target_BD - pred_BD.float()).pow(2) * weights_D).sum()

        l2 = weighted_l2(z_BD, out.recon_BD)
        prefix_l2 = [weighted_l2(z_BD, r) for r in out.prefix_recons_BD or []]
        loss = (l2 + sum(prefix_l2)) / total_variance
        if out.l0 is not None and getattr(cfg, "l0_coef", 0) > 0:  # JumpReLU: pull mean L0 to the target k
            n_local = z_BD.shape[0]
            loss = loss + cfg.l0_coef / world * (out.l0 / n_local / sae.k - 1).pow(2)
        aux_l2 = torch.zeros((), device=z_BD.device)
        if out.aux_indices_BA.shape[1] > 0:
            aux_BD = sparse_decode(out.aux_values_BA, out.aux_indices_BA, sae.W_dec)
            aux_l2 = weighted_l2(z_BD - out.recon_BD.detach().float(), aux_BD)
            loss = loss + cfg.auxk_coef * aux_l2 / total_variance
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(sae.parameters())
        fired = torch.bincount(out.indices_BK[out.values_BK > 0], minlength=sae.num_latents)
        sums = torch.stack([l2.detach(), aux_l2.detach(), (out.values_BK > 0).sum().float(),
                            *(p.detach() for p in prefix_l2)])
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
        sae.observe(out, getattr(cfg, "threshold_rate", 0.01))  # the rate only threshold families have
        n_tokens = global_tokens if global_tokens is not None else z_BD.shape[0] * world
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
            **{f"fvu_prefix{i}": float(v) / tv for i, v in enumerate(sums[3:])},
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
            for name, t in self.sae.state_dict().items():  # parameters and buffers (BatchTopK's threshold)
                if not name.startswith("normalizer."):
                    t.copy_(tensors[f"model.{name}"])
        load_optimizer_tensors(self.opt, tensors)
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])
