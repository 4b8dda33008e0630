"""`steer`: generate the same prompts and seeds with and without feature edits.

Flow: check every edit against the dictionary and the model (nothing generates until all are valid) ->
generate the unsteered images (recording the edited sites when a strength is in norm units) -> resolve each
edit's strength, region and steps -> generate once per item of ``edits`` with its interventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflens.adapters.base import Capture, ModelAdapter

from .edits import Edit, parse_steps
from .hooks import LatentEdit
from .regions import ACTIVE, object_weights, parse_region


@dataclass
class SteerResult:
    """Images uint8 (B, H, W, 3): ``baseline`` unsteered, ``images[i]`` with ``edits[i]`` applied;
    ``records[i]`` says what item i did (JSON-able); ``readings`` the oracle's reading of every image
    (embedded world only: {"baseline": [...], "steered": [[...] per item]})."""

    prompts: list[str]
    seeds: list[int]
    baseline: np.ndarray
    images: list[np.ndarray]
    records: list[list[dict]]
    readings: dict | None = None
    num_steps: int = 0
    regions: list = field(default_factory=list)  # per item: (B, gh, gw) token weights of its edits, or None
    extra: dict = field(default_factory=dict)


def typical_activation(index, latent: int, step: int | None) -> float:
    """The mean of the latent's top images' activations (each image's largest token activation) in a feature
    index, at ``step`` when the index has it, else at every indexed step."""
    tops = index.top_images(latent)
    at_step = [t["score"] for t in tops if step is not None and t["step"] == step]
    scores = at_step or [t["score"] for t in tops]
    if not scores or max(scores) <= 0:
        raise ValueError(f"latent {latent} never fires in the feature index {index.path}: its typical activation is "
                         f"unknown; use unit='raw' or 'norm'")
    return float(np.mean(scores))


def _load_index(dictionary, index):
    if index is None or isinstance(index, (str, Path)):
        from difflens.interpret.index import FeatureIndex
        from difflens.store.run_layout import index_folder, is_index

        path = Path(index) if index is not None else (index_folder(dictionary.path) if dictionary.path else None)
        if path is None or not is_index(path):
            raise ValueError("unit 'typical' needs the dictionary's feature index (strength in multiples of each "
                             "latent's typical activation): build it with `difflens features index --run "
                             f"{dictionary.path or 'DIR'}` or pass index=...; or use unit='norm' or 'raw'")
        return FeatureIndex.load(path, dictionary=dictionary)
    return index


def _groups(edits) -> list[list[Edit]]:
    if isinstance(edits, Edit):
        edits = [edits]
    groups = [[e] if isinstance(e, Edit) else list(e) for e in edits]
    if not groups or any(not g or not all(isinstance(e, Edit) for e in g) for g in groups):
        raise ValueError("edits must be a non-empty list whose items are an Edit or a non-empty list of Edits")
    return groups


def _device(model: ModelAdapter) -> torch.device:
    return next(model._denoiser().parameters()).device


def steer(model: ModelAdapter, dictionary, edits, prompts, seeds=0, *, num_steps: int | None = None,
          guidance_scale: float | None = None, resolution: int | None = None, index=None) -> SteerResult:
    """Generate ``prompts`` with ``seeds`` unsteered, then once per item of ``edits`` (an Edit or a list of
    Edits applied together). ``index``: the feature index for unit "typical" (default: <dictionary>/index)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else [int(s) for s in seeds]
    groups = _groups(edits)
    num_steps = model.default_num_steps if num_steps is None else int(num_steps)
    plans = _plans(groups, dictionary, model, num_steps, resolution)  # every edit checked before generating
    if any(e.unit == "typical" and e.mode in ("add", "clamp") for e, *_ in plans):
        index = _load_index(dictionary, index)
    wants_oracle = model.name.startswith("embedded")
    if any(isinstance(r, str) and r != ACTIVE for *_, r in plans) and not wants_oracle:
        raise ValueError("object and background regions need the shapes-world oracle (the embedded model)")

    dictionary = dictionary.to(_device(model)).eval()
    norm_sites = sorted({info.name for e, info, *_ in plans if e.unit == "norm" and e.mode in ("add", "clamp")})
    norms: dict[str, list[float]] = {s: [] for s in norm_sites}

    def record_norm(site, _step, acts_BTD):
        norms[site].append(float(acts_BTD.float().norm(dim=-1).mean()))

    capture = [Capture(norm_sites, record_norm)] if norm_sites else []
    common = dict(num_steps=num_steps, resolution=resolution, guidance=guidance_scale)
    baseline = model.generate(prompts, seeds, capture=capture, **common)
    readings = None
    if wants_oracle:
        from difflens.world.oracle import read_image

        world = model.world
        readings = [read_image(im, world=world) for im in baseline]

    resolve = _Resolver(dictionary, index, norms, readings, len(prompts))
    images, records, regions = [], [], []
    planned = iter(plans)
    for group in groups:
        interventions, described, union = [], [], None
        for _ in group:
            edit, info, steps, region = next(planned)
            iv, weights, record = resolve(edit, info, steps, region)
            interventions.append(iv)
            if weights is not None and info.grid is not None:
                w = weights.numpy().reshape(-1, *info.grid)
                union = w if union is None else np.maximum(union, w)
            described.append(record)
        images.append(model.generate(prompts, seeds, interventions=interventions, **common))
        for iv, d in zip(interventions, described):
            d["edited_token_steps"] = sum(n for _s, n, _m in iv.log)
        records.append(described)
        regions.append(None if union is None else np.broadcast_to(union, (len(prompts), *union.shape[1:])))
    result = SteerResult(prompts, seeds, baseline, images, records, num_steps=num_steps, regions=regions)
    if wants_oracle:
        result.readings = {"baseline": [reading_dict(r, world) for r in readings],
                           "steered": [[reading_dict(read_image(im, world=world), world) for im in batch]
                                       for batch in images]}
    return result


def _plans(groups: list[list[Edit]], dictionary, model: ModelAdapter, num_steps: int, resolution) -> list[tuple]:
    """(edit, site info, steps, static region) of every edit in order, each checked against the dictionary and
    the model."""
    plans = []
    for group in groups:
        for edit in group:
            edit.check(dictionary.num_latents)
            site = edit.site or dictionary.site
            if site is None:
                raise ValueError("the dictionary does not record its site: give the edit a site")
            info = model.site(site, resolution)
            if info.dim != dictionary.d_in:
                raise ValueError(f"site {site} has width {info.dim}, the dictionary has width {dictionary.d_in}")
            steps = parse_steps(edit.steps, num_steps)
            dictionary.check_steps(steps, f"steered (edit of latent {edit.latent} at steps {steps})")
            plans.append((edit, info, steps, parse_region(edit.region, info.grid)))
    return plans


class _Resolver:
    """Turns a checked edit into its intervention once the unsteered images exist: the strength in raw units
    (typical activation from the index, mean token norm from the baseline), the region's token weights (object
    regions from the oracle's readings), and the record of what it did.

    A dictionary with one normaliser per denoising step edits each step along that step's residual direction
    (a norm-unit strength divides by their mean length over the edit's steps)."""

    def __init__(self, dictionary, index, norms: dict[str, list[float]], readings, n_prompts: int):
        from difflens.dictionaries.normalization import StepNormalizers

        self.dictionary, self.index, self.norms, self.readings, self.n_prompts = (dictionary, index, norms, readings,
                                                                                  n_prompts)
        self.per_step = isinstance(dictionary.normalizer, StepNormalizers)
        self._directions: dict[int | None, torch.Tensor] = {}

    def directions(self, step: int | None) -> torch.Tensor:
        """(F, D) residual directions at denoising ``step`` (None: the one normaliser's), computed once."""
        if step not in self._directions:
            self._directions[step] = self.dictionary.residual_directions(step=step)
        return self._directions[step]

    def __call__(self, edit: Edit, info, steps: list[int], region) -> tuple[LatentEdit, torch.Tensor | None, dict]:
        """(intervention, (B or 1, T) token weights or None, record)."""
        by_step = {s: self.directions(s)[edit.latent] for s in steps} if self.per_step else None
        vectors = list(by_step.values()) if by_step else [self.directions(None)[edit.latent]]
        direction_D, length = vectors[0], float(np.mean([float(v.norm()) for v in vectors]))
        takes_amount = edit.mode in ("add", "clamp")  # scale's strength is a factor, ablate's is unused
        amount, basis = float(edit.strength), ("raw" if takes_amount else "factor")
        if takes_amount and edit.unit == "typical":
            typical = typical_activation(self.index, edit.latent, self.dictionary.step)
            amount, basis = edit.strength * typical, f"typical activation {typical:.4g}"
        elif takes_amount and edit.unit == "norm":
            mean_norm = float(np.mean(self.norms[info.name]))
            amount = edit.strength * mean_norm / max(length, 1e-12)
            basis = f"mean token norm {mean_norm:.4g}"
        weights = None
        if isinstance(region, np.ndarray):
            weights = torch.from_numpy(region.reshape(1, -1))
        elif isinstance(region, str) and region != ACTIVE:
            weights = torch.from_numpy(object_weights(self.readings, region, info.grid).reshape(self.n_prompts, -1))
        iv = LatentEdit(site=info.name, vector_D=direction_D, steps=set(steps), halves=edit.guidance,
                        dictionary=self.dictionary, latent=edit.latent, mode=edit.mode, amount=amount,
                        factor=float(edit.strength), weights_BT=weights,
                        active_only=isinstance(region, str) and region == ACTIVE, vector_by_step=by_step)
        record = {**edit.describe(), "site": info.name, "steps": steps,
                  "amount": amount if takes_amount else None, "strength_basis": basis,
                  "tokens": None if weights is None else int((weights > 0).sum())}
        return iv, weights, record


def reading_dict(reading, world="classic") -> dict[str, Any]:
    """An oracle reading as JSON: background and each object's attributes (masks left out); in the rich world
    also the background texture and each object's pattern (`World.describe`; `world` a name or a World)."""
    from difflens.world.worlds import get_world

    return get_world(world).describe(reading)
