"""Train the embedded model on freshly rendered shapes-world scenes with the rectified-flow objective.

Every step's data and noise are a pure function of (seed, step), so a run resumed from a checkpoint
continues exactly as if it had never stopped. Checkpoints are safetensors + JSON written atomically
(see `difflens.checkpoint`); nothing is pickled. The training folder is locked against other writers while a
run trains into it, and a checkpoint (finished or not) made with other settings is refused, differences named,
unless `overwrite`; one of the same settings is resumed (a finished one is just loaded).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..atomic import atomic_write_json
from ..checkpoint import (checkpoint_info, load_checkpoint, load_optimizer_tensors, optimizer_tensors, restore_rng,
                          save_checkpoint, strip, trim_log, with_prefix)
from ..locks import output_lock
from ..outputs import note, same_settings
from ..progress import progress as progress_bar
from ..world import render, sample_scene
from .config import ShapesModelConfig
from .pipeline import MIN_T_FOR_X_PREDICTION, WEIGHTS_FILE, ShapesPipeline, patchify, uint8_to_pixels

# JSON pointers; each names its `<stem>-<step>.safetensors` tensor file
CHECKPOINT = "checkpoint.json"
AUTOENCODER_CHECKPOINT = "autoencoder.json"
LEGACY_CHECKPOINTS = ("checkpoint.pt", "autoencoder.pt")  # pickled, from older versions; never read
# settings that do not change what a run computes: a resume may change them
OPERATIONAL = frozenset({"out", "threads", "checkpoint_every", "overwrite"})


@dataclass
class TrainConfig:
    """Training of the embedded model (`difflens world train`); saved as train_config.json in `out`."""

    out: str = "checkpoints/embedded"
    """training folder (checkpoints, loss log, train_config.json); a run there resumes after a kill"""
    steps: int = 5000
    """optimiser steps of the transformer and text encoder"""
    batch_size: int = 32
    """scenes rendered per step"""
    lr: float = 1e-3
    """peak learning rate (AdamW)"""
    warmup_steps: int = 200
    """linear learning-rate warm-up steps"""
    min_lr_fraction: float = 0.1
    """cosine decay to this share of lr"""
    grad_clip: float = 1.0
    """clip of the gradient norm"""
    ema_decay: float = 0.999
    """decay of the exponential moving average of the weights (the EMA weights are exported), in [0, 1)"""
    object_loss_weight: float = 20.0
    """loss weight of object pixels (and a 1 px rim) relative to background"""
    caption_dropout: float = 0.1
    """share of captions replaced by the empty prompt, so the model also learns the unconditional velocity
    that classifier-free guidance needs; in [0, 1)"""
    loss_t_floor: float = 0.5
    """noise level below which loss weights stop growing: the velocity loss weighs x_0 errors by 1 / t^2, and
    the floor keeps the nearly-clean steps from drowning out the noisy ones, where the prompt alone decides
    the shape; in [0, 1]"""
    autoencoder_steps: int = 4500
    """latent models (latent_channels > 0): autoencoder training steps, run first; the autoencoder is then frozen"""
    autoencoder_lr: float = 1e-3
    """latent models: learning rate of the autoencoder"""
    autoencoder_latent_noise: float = field(default=0.05, metadata={"aliases": ["--autoencoder-noise"]})
    """latent noise in autoencoder training (added to the latents, so the decoder learns to forgive)"""
    text_encoder_init: str | None = None
    """safetensors file of text-encoder weights to start from instead of a random init, e.g. an encoder pretrained
    to parse captions (`difflens world pretrain-text --save`); fine-tuned with the transformer unless
    `freeze_text_encoder`. Read at the start of a run only: a resumed run takes its weights from the checkpoint"""
    autoencoder_init: str | None = None
    """latent models: a model folder (`world ship` / `save_pretrained` layout) or its model.safetensors whose
    autoencoder to reuse, frozen, instead of training one (about 14 minutes on 2 cores); e.g. the shipped rich
    model's, `src/difflens/embedded/weights_rich`"""
    freeze_text_encoder: bool = False
    """keep the text encoder's weights fixed (as FLUX.1 keeps T5 frozen): the diffusion loss then cannot wear away
    what a pretrained encoder knows; measured, fine-tuning erased a parsing encoder's binding within 1,250 steps"""
    seed: int = 0
    """seed of model init and noise"""
    data_seed: int = 0
    """seed of the training scenes"""
    checkpoint_every: int = 200
    """steps between checkpoints"""
    overwrite: bool = False
    """replace a checkpoint in `out` made with other settings (said on stderr) instead of refusing it"""
    threads: int | None = None
    """torch CPU threads (None or 0: torch's choice)"""
    model: ShapesModelConfig = field(default_factory=ShapesModelConfig)
    """architecture of the model to train (the CLI sets the fields of `cli.MODEL_FLAGS`)"""

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ShapesModelConfig(**self.model)
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.loss_t_floor <= 1:
            raise ValueError(f"loss_t_floor must be in [0, 1], got {self.loss_t_floor}")


def training_batch(step: int, cfg: TrainConfig, stream: int = 0) -> tuple[list[str], np.ndarray, torch.Tensor]:
    """(captions, images uint8 (B, H, W, 3), pixel loss weights_B1HW) for one step.

    A pure function of (data_seed, step, stream); stream 1 feeds the autoencoder. Objects cover a few
    per cent of the pixels and their shape lives in their edges, so object pixels and a one-pixel rim
    get `object_loss_weight`.
    """
    rng = np.random.default_rng([cfg.data_seed, step] + ([stream] if stream else []))
    scenes = [sample_scene(rng, world=cfg.model.world) for _ in range(cfg.batch_size)]
    renders = [render(s, cfg.model.image_size) for s in scenes]
    images = np.stack([image for image, _ in renders])
    objects = np.stack([ndimage.binary_dilation(np.any(masks, axis=0)) for _, masks in renders])
    weights = 1 + (cfg.object_loss_weight - 1) * torch.from_numpy(objects[:, None].astype(np.float32))
    return [s.caption for s in scenes], images, weights


def token_weights(weights_B1HW: torch.Tensor, config: ShapesModelConfig) -> torch.Tensor:
    """Pixel loss weights -> per-token weights: (B, N, 48) per pixel value, or (B, N, 1) per latent token
    (the largest pixel weight under it)."""
    if not config.latent_channels:
        return patchify(weights_B1HW.expand(-1, 3, -1, -1), config.patch_size)
    pooled = torch.nn.functional.max_pool2d(weights_B1HW, config.patch_size)
    return pooled.flatten(2).transpose(1, 2)


def train_autoencoder(pipe: ShapesPipeline, cfg: TrainConfig, progress: bool = True) -> None:
    """Train (or resume, or just load) `pipe.autoencoder` on renders; checkpointed to AUTOENCODER_CHECKPOINT.

    Loss: weighted MSE of decode(encode(x) + noise) against x, so decoding tolerates imperfect latents.
    """
    ae = pipe.autoencoder
    path = Path(cfg.out) / AUTOENCODER_CHECKPOINT
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.autoencoder_lr)
    start = 0
    if _has_checkpoint(path):
        tensors, info = load_checkpoint(path)
        ae.load_state_dict(strip(tensors, "model."))
        load_optimizer_tensors(opt, tensors)
        restore_rng(tensors)
        start = int(info["step"])
    ae.train()
    with progress_bar(cfg.autoencoder_steps, "autoencoder", unit="step", enabled=progress, initial=start) as bar:
        for step in range(start, cfg.autoencoder_steps):
            _, images, weights = training_batch(step, cfg, stream=1)
            x = uint8_to_pixels(images)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 1)
            z = ae.encode(x)
            z = z + cfg.autoencoder_latent_noise * torch.randn(z.shape, generator=gen)
            loss = (((ae.decode(z) - x) ** 2) * weights).sum() / (weights.sum() * 3)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.autoencoder_steps:
                save_checkpoint(path, step + 1, {**with_prefix(ae.state_dict(), "model."), **optimizer_tensors(opt)},
                                {"kind": "autoencoder", "config": asdict(cfg)})
    ae.eval().requires_grad_(False)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_loss(pipe: ShapesPipeline, ids_BT: torch.Tensor, x0_BND: torch.Tensor, generator: torch.Generator,
              weights_BND: torch.Tensor | None = None, loss_t_floor: float = 0.0) -> torch.Tensor:
    """Rectified-flow loss: (weighted) MSE between predicted and true velocity at logit-normal noise levels.

    The velocity error is (x_0 error) / t; with `loss_t_floor` > 0 it is scaled to (x_0 error) / max(t, floor).
    """
    b = x0_BND.shape[0]
    noise = torch.randn(x0_BND.shape, generator=generator)
    t = torch.sigmoid(torch.randn(b, generator=generator))
    xt = (1 - t[:, None, None]) * x0_BND + t[:, None, None] * noise
    embeds, pooled = pipe.encode_ids(ids_BT)
    v = pipe.velocity(xt.to(pipe.device), t.to(pipe.device), embeds, pooled)
    err = (v.float() - (noise - x0_BND).to(pipe.device)) ** 2
    if loss_t_floor > 0:
        t_used = t.clamp(min=MIN_T_FOR_X_PREDICTION) if pipe.config.prediction == "x" else t
        err = err * ((t_used / t.clamp(min=loss_t_floor)) ** 2)[:, None, None].to(err.device)
    if weights_BND is None:
        return err.mean()
    weights_BND = weights_BND.to(pipe.device)
    return (err * weights_BND).sum() / weights_BND.sum()


def caption_ids(pipe: ShapesPipeline, prompts: list[str], dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Token ids of the captions, each replaced by the empty prompt with probability `dropout`."""
    ids = pipe.tokenizer(prompts)
    if dropout > 0:  # draw nothing otherwise, so runs without dropout keep their random stream
        ids[torch.rand(len(prompts), generator=generator) < dropout] = 0
    return ids


def _params(pipe: ShapesPipeline, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """The trained parameters: the transformer's, and the text encoder's unless it is frozen."""
    text = [] if cfg.freeze_text_encoder else [*pipe.text_encoder.parameters()]
    return [*pipe.transformer.parameters(), *text]


def _has_checkpoint(pointer: Path) -> bool:
    """Whether `pointer` exists; a pickled checkpoint of an older version beside it is an error, not a restart."""
    if pointer.exists():
        return True
    for name in LEGACY_CHECKPOINTS:
        legacy = pointer.parent / name
        if legacy.exists():
            raise ValueError(f"{legacy} is a pickled checkpoint from an older difflens and is not read any more; "
                             f"delete it to start over")
    return False


def _load_init(setting: str, module: torch.nn.Module, file: Path, shape: str, prefix: str | None = None) -> None:
    """Load safetensors `file` (only its `prefix`ed tensors, prefix removed, when given) into `module`, cast to
    float32, for the `setting` that named it; a missing file, no such tensors or other shapes is an error naming
    the setting, the file and `shape` (what the module is)."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise FileNotFoundError(f"{setting}: no weights file at {file}")
    weights = load_file(file)
    if prefix is not None:
        weights = strip(weights, prefix)
        if not weights:
            raise ValueError(f"{setting}: {file} holds no {shape} weights")
    try:
        module.load_state_dict({k: v.float() for k, v in weights.items()})
    except RuntimeError as err:
        raise ValueError(f"{setting}: {file} does not fit this model's {shape}: {err}") from None


def load_text_encoder(pipe: ShapesPipeline, path: str | Path) -> None:
    """Load text-encoder weights (safetensors) into `pipe`; a missing file or other shapes is an error naming it."""
    _load_init("text_encoder_init", pipe.text_encoder, Path(path),
               f"text encoder ({pipe.config.text_layers} layers, width {pipe.config.text_encoder_width}; a "
               f"narrower encoder can serve a wider transformer with text_width / --text-width)")


def load_autoencoder(pipe: ShapesPipeline, path: str | Path) -> None:
    """Load the autoencoder of a saved model (folder or model.safetensors) into `pipe`, cast to float32, frozen; a
    missing file, a pixel-space model or other shapes is an error naming it."""
    if pipe.autoencoder is None:
        raise ValueError("autoencoder_init: this model works in pixel space (latent_channels 0) and has no autoencoder")
    path = Path(path)
    _load_init("autoencoder_init", pipe.autoencoder, path / WEIGHTS_FILE if path.is_dir() else path,
               f"autoencoder ({pipe.config.latent_channels} latent channels)", prefix="autoencoder.")
    pipe.autoencoder.eval().requires_grad_(False)


def train(cfg: TrainConfig, progress: bool = True, until: int | None = None) -> ShapesPipeline:
    """Train (or resume) into `cfg.out`; returns the pipeline carrying the EMA weights.

    `until` stops after that step (checkpointed) without changing the schedule: a time-boxed run
    that a later call resumes exactly. `cfg.out` is locked for the run; a checkpoint there made with other
    settings is refused (or, with `cfg.overwrite`, replaced), see :func:`check_previous_run`.
    """
    with output_lock(cfg.out):
        check_previous_run(cfg)
        return _train(cfg, progress, until)


def run_settings(config: dict) -> dict:
    """What a checkpoint's run must share with a resume: its config but the operational fields, completed
    with today's defaults (a checkpoint written before a field existed ran with its default); of the model,
    its architecture (sampling defaults may change)."""
    defaults = asdict(TrainConfig())
    model = {**defaults["model"], **(config.get("model") or {})}
    model = ShapesModelConfig(**{k: v for k, v in model.items() if k in ShapesModelConfig.__dataclass_fields__})
    merged = {**defaults, **config, "model": model.architecture()}
    return {k: v for k, v in merged.items() if k not in OPERATIONAL}


def check_previous_run(cfg: TrainConfig) -> None:
    """Refuse a checkpoint in `cfg.out` made with other settings (naming each difference), or with
    `cfg.overwrite` delete it, saying so; say when the run there is already finished."""
    out = Path(cfg.out)
    pointers = [p for p in (out / CHECKPOINT, out / AUTOENCODER_CHECKPOINT) if _has_checkpoint(p)]
    if not pointers:
        return
    info = checkpoint_info(pointers[0])
    recorded = run_settings(info.get("config") or {})
    if same_settings(out, recorded, run_settings(asdict(cfg)), what="a training checkpoint", label="checkpoint",
                     overwrite=cfg.overwrite):
        if pointers[0].name == CHECKPOINT and info.get("step") == cfg.steps:
            note(f"{out} already holds this run, finished at step {cfg.steps}: loaded, not retrained")
        return
    for stem in (CHECKPOINT, AUTOENCODER_CHECKPOINT):
        (out / stem).unlink(missing_ok=True)
        for tensors in out.glob(f"{Path(stem).stem}-*.safetensors*"):
            tensors.unlink()
    for name in ("loss.jsonl", "train_config.json"):
        (out / name).unlink(missing_ok=True)


def _train(cfg: TrainConfig, progress: bool, until: int | None) -> ShapesPipeline:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = ShapesPipeline.random(cfg.model, seed=cfg.seed)
    if cfg.text_encoder_init:
        load_text_encoder(pipe, cfg.text_encoder_init)
    if cfg.autoencoder_init:
        load_autoencoder(pipe, cfg.autoencoder_init)
    elif pipe.autoencoder is not None:
        train_autoencoder(pipe, cfg, progress)
    pipe.transformer.train()
    pipe.text_encoder.train(not cfg.freeze_text_encoder).requires_grad_(not cfg.freeze_text_encoder)
    params = _params(pipe, cfg)
    ema = ShapesPipeline(cfg.model, *ShapesPipeline.build_modules(cfg.model))
    ema.load_state_dict(pipe.state_dict())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    ckpt_path = out / CHECKPOINT
    if _has_checkpoint(ckpt_path):
        tensors, info = load_checkpoint(ckpt_path)  # made with these settings: check_previous_run
        pipe.load_state_dict(strip(tensors, "model."))
        ema.load_state_dict(strip(tensors, "ema."))
        load_optimizer_tensors(opt, tensors)
        restore_rng(tensors)
        start = int(info["step"])
    atomic_write_json(out / "train_config.json", asdict(cfg))
    ema_params = _params(ema, cfg)
    live_params = [p.detach() for p in params]  # views: follow every optimizer step
    stop = cfg.steps if until is None else min(until, cfg.steps)
    bar = progress_bar(cfg.steps, "train", unit="step", enabled=progress, initial=start)
    trim_log(out / "loss.jsonl", start)
    with bar, open(out / "loss.jsonl", "a") as log:
        t0 = time.time()
        for step in range(start, stop):
            prompts, images, pixel_weights = training_batch(step, cfg)
            x0, weights = pipe.images_to_tokens(images), token_weights(pixel_weights, cfg.model)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, cfg)
            ids = caption_ids(pipe, prompts, cfg.caption_dropout, gen)
            loss = flow_loss(pipe, ids, x0, gen, weights, cfg.loss_t_floor)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, live_params, 1 - decay)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % 20 == 0:
                log.write(json.dumps({"step": step + 1, "loss": loss.item(), "elapsed_s": time.time() - t0}) + "\n")
                log.flush()
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stop:
                tensors = {**with_prefix(pipe.state_dict(), "model."), **with_prefix(ema.state_dict(), "ema."),
                           **optimizer_tensors(opt)}
                save_checkpoint(ckpt_path, step + 1, tensors, {"config": asdict(cfg)})
    ema.transformer.eval()
    ema.text_encoder.eval()
    return ema


def load_trained(path: str | Path) -> ShapesPipeline:
    """A model folder (config.json + model.safetensors), or a `world train` folder: its latest EMA checkpoint (an
    early read of a running job)."""
    if (Path(path) / CHECKPOINT).exists() and not (Path(path) / WEIGHTS_FILE).exists():
        return load_checkpoint_ema(path)
    return ShapesPipeline.from_pretrained(path)


def _checkpoint_pointer(out: str | Path) -> Path:
    """A training folder's checkpoint pointer; no checkpoint there is an error naming the folder."""
    path = Path(out) / CHECKPOINT
    if not _has_checkpoint(path):
        raise FileNotFoundError(f"no training checkpoint in {out} (expected {path})")
    return path


def checkpoint_step(out: str | Path) -> int:
    """The step of a training folder's latest checkpoint."""
    return int(checkpoint_info(_checkpoint_pointer(out))["step"])


def load_checkpoint_ema(out: str | Path) -> ShapesPipeline:
    """The EMA pipeline stored in a training folder's checkpoint (to evaluate or export mid-run)."""
    path = _checkpoint_pointer(out)
    tensors, info = load_checkpoint(path, prefixes=("ema.",))
    model_cfg = ShapesModelConfig(**info["config"]["model"])
    pipe = ShapesPipeline(model_cfg, *ShapesPipeline.build_modules(model_cfg))
    pipe.load_state_dict(strip(tensors, "ema."))
    return pipe
