"""The adapter interface every text-to-image model implements, and the hook plumbing they share.

Site names
----------
FLUX.1 and the embedded model (a FluxTransformer2DModel)::

    double.<i>.<stream>.<kind>     transformer_blocks[i]        (double-stream block)
    single.<i>.<stream>.<kind>     single_transformer_blocks[i] (single-stream block, split into parts)

    stream: img (image tokens, row-major over the latent grid) | txt (text tokens)
    kind:   out    the block's output residual stream              (B, T, width)
            update the block's output minus its input (what it adds) (B, T, width)
            mlp    the block's MLP hidden activations, after GELU   (B, T, mlp_width) -- the neuron baseline

  e.g. ``double.18.img.out``, ``double.18.txt.update``, ``single.9.img.out``, ``double.3.img.mlp``.

SDXL / SDXL Turbo (every Transformer2DModel in the UNet, by module path)::

    unet.<module path>.update      block output minus input, image tokens of the conditional half
    unet.<module path>.out         block output
  e.g. ``unet.down_blocks.2.attentions.1.update``, ``unet.mid_block.attentions.0.update``.

Activations handed to capture callbacks are ``acts_BTD``: B images of the batch (the conditional
half under classifier-free guidance), T tokens of the site (image tokens row-major:
token = row * grid_w + col), D channels. Steps are 0-based denoising step indices.

Hooks
-----
`ModelAdapter.generate(..., capture=..., interventions=...)` installs PyTorch hooks for the
duration of one generation:
  * `Capture(sites, steps, fn)` calls ``fn(site, step, acts_BTD)`` (read only, so images are
    unchanged bit for bit);
  * `Intervention(site, vector_D, token_mask_T, steps, scale, halves)` adds ``scale * vector`` to
    the site's tokens in the mask at the chosen steps (out/update sites: the block's output stream;
    mlp sites: the MLP hidden), on the chosen halves of a CFG batch. Subclasses may compute the
    addition from the site's value (`Intervention.delta`; steering's latent edits do). Captures see values after interventions at the same site (and an
    out/update pair of one block sees the interventions on both). Interventions are validated
    against the site and the run (width, finiteness, token count, steps) before the model runs.

Random-init control (teacher forcing)
-------------------------------------
Inside ``with adapter.teacher_forced_control(seed):`` the trained denoiser still generates (images are
unchanged bit for bit), but at every denoiser call a randomly initialised copy of it (`random_init_copy`) is
called first with exactly the same arguments (x_t, t, text embeddings, ids, ...; its output is discarded), and
the step counter and every capture hook sit on the copy's modules instead of the trained one's: captures
record what an untrained network of the same architecture computes from the trained model's own inputs, at
the same step indices (the conditional half under classifier-free guidance, as usual). Interventions are
refused there: they would edit the copy, whose output nothing reads.
"""

from __future__ import annotations

import copy as copy_module
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

CaptureFn = Callable[[str, int, torch.Tensor], None]

#: what a capture records: the trained model ("none"), or a random-init copy of its denoiser teacher-forced
#: with the trained model's inputs ("random-init", see `ModelAdapter.teacher_forced_control`)
CONTROLS = ("none", "random-init")


@dataclass(frozen=True)
class SiteInfo:
    """A hook site at a given resolution. grid = (grid_h, grid_w) for image-stream sites, else None."""

    name: str
    stream: str  # "image" | "text"
    kind: str  # "out" | "update" | "mlp"
    tokens: int  # T per image
    dim: int  # D
    grid: tuple[int, int] | None = None


@dataclass
class Capture:
    """Record `sites` at `steps` (None = every step) by calling fn(site, step, acts_BTD)."""

    sites: Sequence[str]
    fn: CaptureFn
    steps: Collection[int] | None = None


GUIDANCE_HALVES = ("both", "cond", "contrast")


def halves_sign(batch: int, cfg_batch: bool, halves: str) -> torch.Tensor | None:
    """Per-image factor (B,) that puts an edit on the chosen halves of a [uncond; cond] batch; None = all 1.

    "both": every image; "cond": the conditional half only; "contrast": +1 on the conditional half and -1
    on the unconditional one (the SDXL-Turbo app's rule). Without a CFG batch every image is conditional.
    """
    if not cfg_batch or halves == "both":
        return None
    sign = torch.ones(batch)
    sign[: batch // 2] = 0.0 if halves == "cond" else -1.0
    return sign


def per_image(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """``x`` (images, ...) repeated to cover a generation batch of ``batch`` rows: a classifier-free-guidance
    batch stacks [uncond; cond], each half holding the images in order."""
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"{what}: given for {x.shape[0]} images, the batch holds {batch}")
    return x.repeat(batch // x.shape[0], *([1] * (x.ndim - 1)))


@dataclass
class Intervention:
    """Add `scale * vector_D` to `site` over the tokens where `token_mask_T` is nonzero (None = all),
    at `steps` (None = all). A float mask weights the addition per token. `halves`: which halves of a
    classifier-free-guidance batch it edits ("both", "cond" or "contrast": +cond, -uncond).

    Subclasses that compute their edit from the site's value (steering's latent edits) override
    :meth:`delta`; the hook adds the returned delta, so a zero delta leaves the image bit-identical."""

    site: str
    vector_D: torch.Tensor
    token_mask_T: torch.Tensor | None = None
    steps: Collection[int] | None = None
    scale: float = 1.0
    halves: str = "both"

    def validate(self, info: SiteInfo, num_steps: int | None = None) -> None:
        """Check the intervention against its site's shape (at the run's resolution) and the run's
        `num_steps` before any hook runs; a mismatch would otherwise fail deep inside the model
        (wrong width) or do nothing at all (a step the run never reaches)."""
        where = f"intervention on {self.site}"
        v = self.vector_D
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{where}: vector_D must be a torch.Tensor, got {type(v).__name__}")
        if v.ndim != 1:
            raise ValueError(f"{where}: vector_D must be 1-D (D,), got shape {tuple(v.shape)}")
        if v.shape[0] != info.dim:
            raise ValueError(f"{where}: vector has width {v.shape[0]}, the site has width {info.dim}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{where}: vector has non-finite values (nan or inf)")
        if not math.isfinite(float(self.scale)):
            raise ValueError(f"{where}: scale must be finite, got {self.scale}")
        if self.halves not in GUIDANCE_HALVES:
            raise ValueError(f"{where}: halves must be one of {', '.join(GUIDANCE_HALVES)}, got {self.halves!r}")
        m = self.token_mask_T
        if m is not None:
            if not isinstance(m, torch.Tensor) or m.ndim != 1:
                raise ValueError(f"{where}: token mask must be a 1-D torch.Tensor (T,), got "
                                 f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
            if m.shape[0] != info.tokens:
                raise ValueError(f"{where}: token mask has {m.shape[0]} tokens, the site has {info.tokens} "
                                 f"at this resolution")
            if not torch.isfinite(m.float()).all():
                raise ValueError(f"{where}: token mask has non-finite values (nan or inf)")
        if self.steps is not None:
            bad = [s for s in self.steps if int(s) != s or s < 0 or (num_steps is not None and s >= num_steps)]
            if bad:
                span = f"0..{num_steps - 1}" if num_steps is not None else "0 or more"
                raise ValueError(f"{where}: steps {sorted(bad)} lie outside this run's steps ({span})")

    def active_at(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def token_weights(self, acts_BTD: torch.Tensor) -> torch.Tensor | None:
        """The token mask as (1, T, 1) weights in the activations' dtype (None: every token)."""
        if self.token_mask_T is None:
            return None
        mask = self.token_mask_T.to(acts_BTD).reshape(1, -1, 1)
        if mask.shape[1] != acts_BTD.shape[1]:  # validate() catches this first under ModelAdapter.hooked
            raise ValueError(f"intervention mask on {self.site} has {mask.shape[1]} tokens, the site has {acts_BTD.shape[1]}")
        return mask

    def delta(self, value_BTD: torch.Tensor, step: int) -> torch.Tensor | None:
        """What to add to the site, broadcastable to (B, T, D); `value_BTD` is the site's value (the block's
        update at update sites). None: nothing to add."""
        delta = (self.scale * self.vector_D.to(value_BTD)).reshape(1, 1, -1)
        mask = self.token_weights(value_BTD)
        return delta if mask is None else mask * delta

    def apply(self, acts_BTD: torch.Tensor, step: int, value_BTD: torch.Tensor | None = None,
              cfg_batch: bool = False) -> torch.Tensor:
        """`acts_BTD` plus this step's delta on the chosen CFG halves (unchanged when inactive)."""
        if not self.active_at(step):
            return acts_BTD
        delta = self.delta(acts_BTD if value_BTD is None else value_BTD, step)
        if delta is None:
            return acts_BTD
        sign = halves_sign(acts_BTD.shape[0], cfg_batch, self.halves)
        if sign is not None:
            delta = delta * sign.to(acts_BTD).reshape(-1, 1, 1)
        return acts_BTD + delta


@dataclass
class HookPlan:
    """What the hooks of one generation do; the step counter is advanced by the denoiser's pre-hook."""

    captures: list[Capture] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    calls_per_step: int = 1
    calls: int = 0
    # the denoiser's batch is [unconditional; conditional] (classifier-free guidance): captures see the
    # conditional half only; interventions apply to both halves
    cfg_batch: bool = False
    text_len: int | None = None  # text tokens of the current call (FLUX single blocks need it)

    @property
    def step(self) -> int:
        return self.calls // self.calls_per_step

    def wanted(self) -> set[str]:
        return {s for c in self.captures for s in c.sites} | {i.site for i in self.interventions}

    def intervene(self, site: str, acts_BTD: torch.Tensor, block_input_BTD: torch.Tensor | None = None) -> torch.Tensor:
        """The site's stream after this step's interventions. `block_input_BTD` (update sites): the block's
        input, so edits that read the site see the update (output minus input) while adding to the output."""
        for iv in self.interventions:
            if iv.site == site:
                value = None if block_input_BTD is None else acts_BTD - block_input_BTD
                acts_BTD = iv.apply(acts_BTD, self.step, value, self.cfg_batch)
        return acts_BTD

    def capture(self, site: str, acts_BTD: torch.Tensor) -> None:
        if self.cfg_batch:
            acts_BTD = acts_BTD[acts_BTD.shape[0] // 2 :]
        for c in self.captures:
            if site in c.sites and (c.steps is None or self.step in c.steps):
                c.fn(site, self.step, acts_BTD.detach())

    def capturing(self, site: str) -> bool:
        return any(site in c.sites and (c.steps is None or self.step in c.steps) for c in self.captures)

    def intervening(self, site: str) -> bool:
        return any(i.site == site and (i.steps is None or self.step in i.steps) for i in self.interventions)


class ModelAdapter(ABC):
    """A text-to-image model as difflens sees it: sites, seeded batch generation with hooks, token grid."""

    #: short model name written into store manifests
    name: str = "model"
    default_num_steps: int = 1
    default_resolution: int = 256
    default_guidance: float | None = None
    default_store_dtype: str = "float16"
    #: shapes world of the model's default prompts and of the oracle that reads its images ("classic" or
    #: "rich"); the embedded adapter reports its model's, the others are never read by the shapes-world oracle
    world: str = "classic"

    # -- to implement ------------------------------------------------------------------
    @abstractmethod
    def sites(self, resolution: int | None = None) -> list[SiteInfo]:
        """Every hook site with its shape at `resolution` (default resolution if None)."""

    @property
    @abstractmethod
    def default_sites(self) -> list[str]:
        """Sites captured when none are named."""

    @abstractmethod
    def _denoiser(self) -> torch.nn.Module:
        """The module called once per denoising step (per CFG pass): the step counter hooks it."""

    @abstractmethod
    def _install(self, plan: HookPlan, sites: list[str], denoiser: torch.nn.Module) -> list:
        """Register the forward hooks that serve `sites` on the modules of `denoiser` (`_denoiser()`, or its
        random-init copy under `teacher_forced_control`); return their handles."""

    @abstractmethod
    def _generate(self, prompts: list[str], seeds: list[int], num_steps: int, resolution: int,
                  guidance: float | None, plan: HookPlan) -> np.ndarray:
        """Run the model; images uint8 (B, H, W, 3). May set plan.calls_per_step (CFG passes)."""

    def weight_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose weights decide what the model generates (their fingerprint goes into stores)."""
        return {"denoiser": self._denoiser()}

    def control_denoiser(self, seed: int = 0) -> torch.nn.Module:
        """A randomly initialised copy of the denoiser (same architecture, device and dtype), weights drawn
        from `seed` alone: see `random_init_copy` for the initialisation."""
        return random_init_copy(self._denoiser(), seed)

    # -- shared behaviour --------------------------------------------------------------
    _control: torch.nn.Module | None = None  # the teacher-forced copy while `teacher_forced_control` is active

    @contextmanager
    def teacher_forced_control(self, seed: int = 0):
        """Record a random-init control for the duration of the block; yields the copy (`control_denoiser`).

        The trained denoiser generates as usual, so images are those of a normal run with the same seeds. At each
        denoiser call the copy is called first with exactly the same positional and keyword arguments (its output
        discarded), and the hooks of every `generate` inside the block (step counter and captures) go on the
        copy's modules: captures record the copy at the same step indices, the conditional half under
        classifier-free guidance. Interventions are refused inside the block.
        """
        if self._control is not None:
            raise RuntimeError(f"{self.name}: a teacher-forced control is already active")
        control = self.control_denoiser(seed)
        self._control = control
        try:
            yield control
        finally:
            self._control = None

    def weights_fingerprint(self) -> str:
        """A short hash of the model's weights: a store refuses to resume under different weights."""
        return weights_fingerprint(self.weight_modules())

    def site(self, name: str, resolution: int | None = None) -> SiteInfo:
        by_name = {s.name: s for s in self.sites(resolution)}
        if name not in by_name:
            close = [n for n in by_name if n.split(".")[:2] == name.split(".")[:2]] or list(by_name)[:8]
            raise ValueError(f"unknown site {name!r} for model {self.name}; e.g. {', '.join(close[:8])} "
                             f"(`difflens sites --model {self.name}` lists all {len(by_name)})")
        return by_name[name]

    def grid(self, resolution: int | None = None) -> tuple[int, int]:
        """(grid_h, grid_w) of the image tokens of the main (transformer) grid."""
        img = [s for s in self.sites(resolution) if s.grid]
        return img[0].grid

    def token_to_rowcol(self, index, site: str | None = None, resolution: int | None = None):
        """Image-token index (int or array) -> (row, col) in the latent grid (of `site` for UNets)."""
        grid = self.site(site, resolution).grid if site else self.grid(resolution)
        if grid is None:
            raise ValueError(f"site {site} holds text tokens: they have no (row, col)")
        index = np.asarray(index)
        if (index < 0).any() or (index >= grid[0] * grid[1]).any():
            raise ValueError(f"image-token index out of range for a {grid[0]}x{grid[1]} grid")
        return index // grid[1], index % grid[1]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int] | int = 0,
        num_steps: int | None = None,
        resolution: int | None = None,
        guidance: float | None = None,
        capture: Capture | Sequence[Capture] = (),
        interventions: Sequence[Intervention] = (),
    ) -> np.ndarray:
        """Generate images uint8 (B, H, W, 3) with hooks active. Image i's noise depends only on seeds[i]
        (an int base seed s means seeds s, s+1, ...)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            raise ValueError("no prompts to generate")
        num_steps = self.default_num_steps if num_steps is None else int(num_steps)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        resolution = self.default_resolution if resolution is None else int(resolution)
        guidance = self.default_guidance if guidance is None else guidance
        plan = HookPlan(captures=[capture] if isinstance(capture, Capture) else list(capture),
                        interventions=list(interventions))
        with self.hooked(plan, resolution, num_steps):
            return self._generate(prompts, seeds, num_steps, resolution, guidance, plan)

    @contextmanager
    def hooked(self, plan: HookPlan, resolution: int | None = None, num_steps: int | None = None):
        """Install the plan's hooks (and the step counter) for the duration of the block. Sites and
        interventions are checked first (at `resolution`; steps against `num_steps` when given), so a
        bad plan raises before the model runs."""
        sites = sorted(plan.wanted())
        info = {s: self.site(s, resolution) for s in sites}  # unknown site -> clear error
        for iv in plan.interventions:
            iv.validate(info[iv.site], num_steps)

        def count(_module, args, kwargs):
            ehs = kwargs.get("encoder_hidden_states")
            plan.text_len = ehs.shape[1] if isinstance(ehs, torch.Tensor) else None
            return None

        def advance(_module, _args, _kwargs, _out):
            plan.calls += 1

        control = self._control
        if control is not None and plan.interventions:
            raise ValueError("interventions under a teacher-forced control would edit the random-init copy, whose "
                             "output is discarded; generate without the control to intervene")
        handles = []
        if sites:
            den = self._denoiser()
            target = den if control is None else control
            if control is not None:  # the copy runs first on the same inputs, then the trained denoiser
                handles.append(den.register_forward_pre_hook(_teacher_force(control), with_kwargs=True))
            handles += [target.register_forward_pre_hook(count, with_kwargs=True),
                        target.register_forward_hook(advance, with_kwargs=True)]
            handles += self._install(plan, sites, target)
        try:
            yield plan
        finally:
            for h in handles:
                h.remove()


def _teacher_force(control: torch.nn.Module) -> Callable:
    """Pre-hook for the trained denoiser: call `control` with the very arguments the denoiser is about to get."""

    def force(_module, args, kwargs):
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        param = next(control.parameters(), None)
        if first is not None and param is not None and param.device != first.device:
            control.to(first.device)  # the trained one is offloaded (CPU offload): follow its inputs
        control(*args, **kwargs)
        return None

    return force


def random_init_copy(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of `module` with freshly initialised weights, drawn from `seed` alone (on the CPU, in float32, then
    moved to `module`'s device and floating dtype; the global RNG is left as it was; `control_rng_seed`).

    diffusers models (FluxTransformer2DModel, UNet2DConditionModel) are built anew from their config, i.e. with
    the initialisation their constructors use: PyTorch's defaults (Linear/Conv kaiming-uniform weights with
    a = sqrt(5) and uniform biases, embeddings N(0, 1), norm scales 1 and shifts 0); neither architecture
    zero-initialises a layer, so every site of the copy carries non-constant activations. (The embedded
    model's training starts from this same initialisation, with another seed.) Other modules are deep-copied
    and every submodule's `reset_parameters()` is called; a parameter that no such method re-draws is refused
    by name, since it would carry trained values into the control.

    With these defaults the copy's blocks add little to the residual stream (on the shipped embedded model
    an update's std is 3-8 % of the stream's), so its stream at any depth is mostly a random linear
    embedding of the inputs: the point of the control.
    """
    dtypes = [p.dtype for p in module.parameters() if p.is_floating_point()]
    devices = [p.device for p in module.parameters() if p.device.type != "meta"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(control_rng_seed(seed))
        if hasattr(module, "config") and hasattr(type(module), "from_config"):
            copy = type(module).from_config(module.config)
        else:
            copy = copy_module.deepcopy(module).float().cpu()
            reset = set()
            for sub in copy.modules():
                if callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
                    reset |= {id(p) for p in sub.parameters(recurse=False)}
            kept = [n for n, p in copy.named_parameters() if id(p) not in reset]
            if kept:
                raise ValueError(f"cannot re-initialise {type(module).__name__}: no reset_parameters() for "
                                 f"{', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}; override "
                                 f"ModelAdapter.control_denoiser")
    # torch's own `to`: diffusers' override warns about fp32-pinned modules, which a fresh model has none of
    torch.nn.Module.to(copy, device=devices[0] if devices else "cpu", dtype=dtypes[0] if dtypes else None)
    return copy.eval().requires_grad_(False)


def control_rng_seed(seed: int) -> int:
    """The torch seed a control's weights are drawn with: a hash of `seed`, so a copy never coincides with a
    model that was itself built right after ``torch.manual_seed(seed)`` (the tiny test models, and the
    initialisation the embedded model's training started from)."""
    return int.from_bytes(hashlib.sha256(f"difflens random-init control {int(seed)}".encode()).digest()[:8], "little")


def weights_fingerprint(modules: dict[str, torch.nn.Module], full_below: int = 1 << 20,
                        sample: int = 1 << 14) -> str:
    """sha256 (16 hex digits) over every tensor's name, shape and dtype, and its values: all of them for
    tensors under `full_below` values, else `sample` evenly strided ones. Small models are hashed exactly;
    FLUX's 12B parameters cost a few MB of reads. Tensors on the meta device (offloaded) count by shape."""
    h = hashlib.sha256()
    for module_name in sorted(modules):
        for name, tensor in sorted(modules[module_name].state_dict().items()):
            h.update(f"{module_name}.{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            if tensor.device.type == "meta" or tensor.numel() == 0:
                continue
            values = tensor.detach().reshape(-1)
            if values.numel() >= full_below:
                values = values[:: values.numel() // sample][:sample]
            h.update(values.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def diffusers_classes(*names: str) -> tuple:
    """Classes of `diffusers` by name. Importing a diffusers pipeline imports transformers' image processors, which
    warn (once per process) that torchvision is missing; difflens never uses them, so the import runs with
    transformers' logging at errors only and a user of a real model sees only difflens' own output."""
    import importlib

    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        module = importlib.import_module("diffusers")
        return tuple(getattr(module, name) for name in names)
    finally:
        transformers_logging.set_verbosity(previous)


def diffusers_modules(pipe) -> dict[str, torch.nn.Module]:
    """The torch modules of a diffusers pipeline (denoiser, VAE, text encoders that are loaded)."""
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, so image i's noise depends only on seeds[i]."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_uint8(images_BHWC: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] float -> uint8."""
    return (np.clip(np.asarray(images_BHWC, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
