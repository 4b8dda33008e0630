"""`difflens steer`: one latent, one prompt and seed, a sweep of strengths -> a grid PNG (+ JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from difflens.configs import add_command, config_from_args


@dataclass
class SteerCommand:
    """`difflens steer`: edit one latent of a dictionary while its model generates."""

    run: str
    """dictionary folder (its site, step and feature index are used), or a run folder holding one dictionary"""
    latent: int
    """the latent to edit"""
    mode: Literal["add", "clamp", "scale", "ablate"] = "add"
    """add its direction, clamp its activation to a value, scale it, or ablate it"""
    strength: float = 3.0
    """add/clamp: amount in --unit; scale: the factor"""
    sweep: list[float] = field(default_factory=list)
    """several strengths, one column each (replaces --strength), e.g. -6,-3,0,3,6"""
    unit: Literal["typical", "norm", "raw"] = "typical"
    """typical: x the latent's typical activation (mean of its top images' activations in the feature index);
    norm: x the site's mean token norm; raw: activation units"""
    region: str | None = None
    """x0,y0,x1,y1 in image fractions, cells:r,c;r,c, object:N (the oracle's object N), background, active, or all"""
    steps: str | None = None
    """step window start:end (end excluded; floats = fractions of the schedule), default all"""
    guidance: Literal["both", "cond", "contrast"] = "both"
    """classifier-free guidance halves to edit"""
    site: str | None = None
    """site to edit (default: the dictionary's); any site of the same width"""
    prompt: list[str] = field(default_factory=list, metadata={"aliases": ["--prompts"]})
    """prompt(s), ';'-separated or repeated (default: a shapes-world caption on the embedded model)"""
    seed: int = 0
    """noise seed of the first prompt (next prompts: seed+1, ...)"""
    num_steps: int | None = None
    """denoising steps (default: the model's)"""
    guidance_scale: float | None = None
    """classifier-free guidance scale (default: the model's)"""
    model: str | None = None
    """model to steer (default: the model of the dictionary's store, else embedded)"""
    index: str | None = None
    """feature index for --unit typical (default: <run>/index)"""
    output: str = field(default="steer.png", metadata={"aliases": ["-o"]})
    """grid PNG: the unsteered image beside each steered one"""
    json: str | None = None
    """write what was done (and the oracle's reading of every image on the embedded model) here"""


def register(subparsers) -> None:
    add_command(subparsers, "steer", "steer with a feature: unsteered vs steered images from the same seed",
                cmd_steer, SteerCommand)


def _prompts(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(";") if p.strip()]


def cmd_steer(args) -> int:
    from difflens.adapters import load_adapter
    from difflens.atomic import atomic_write_json
    from difflens.dictionaries.io import load_dictionary
    from difflens.evaluation.plots import plot_image_grid
    from difflens.store.run_layout import one_dictionary

    from .edits import Edit
    from .steer import steer

    cmd = config_from_args(SteerCommand, args)
    dictionary = load_dictionary(one_dictionary(cmd.run))
    model_name = cmd.model or (dictionary.store or {}).get("model") or "embedded"
    model = load_adapter(model_name)
    prompts = _prompts(cmd.prompt)
    if not prompts:
        if not model.name.startswith("embedded"):
            raise ValueError("give --prompt: only the embedded model has default prompts")
        from difflens.world import world_prompts

        prompts = world_prompts(1, seed=cmd.seed, world=model.world)
    strengths = cmd.sweep or [cmd.strength]
    edits = [Edit(cmd.latent, cmd.mode, s, cmd.unit, cmd.region, cmd.steps, cmd.guidance, cmd.site)
             for s in strengths]
    result = steer(model, dictionary, edits, prompts, seeds=cmd.seed, num_steps=cmd.num_steps,
                   guidance_scale=cmd.guidance_scale, index=cmd.index)
    titles = ["unsteered"] + [f"{cmd.mode} {s:+g}" if cmd.mode != "ablate" else "ablate" for s in strengths]
    images = [[result.baseline[b]] + [batch[b] for batch in result.images] for b in range(len(prompts))]
    outlines = [[None] + [None if r is None else r[b] for r in result.regions] for b in range(len(prompts))]
    steps = result.records[0][0]["steps"]
    title = (f"latent {cmd.latent} of {dictionary.path.name if dictionary.path else 'dictionary'} at "
             f"{result.records[0][0]['site']}, steps {steps[0]}..{steps[-1]} of {result.num_steps}, unit {cmd.unit}")
    if len(prompts) == 1:
        title, row_titles = f"{title}\n\"{prompts[0]}\", seed {result.seeds[0]}", [""]
    else:
        row_titles = [p if len(p) < 40 else p[:37] + "..." for p in prompts]
    path = plot_image_grid(images, titles, row_titles, title, cmd.output, outlines)
    print(f"wrote {path}")
    if cmd.json:
        atomic_write_json(cmd.json, {"model": model.name, "dictionary": str(dictionary.path), "prompts": prompts,
                               "seeds": result.seeds, "num_steps": result.num_steps, "strengths": strengths,
                               "records": result.records, "readings": result.readings, "grid": str(path)})
        print(f"wrote {cmd.json}")
    return 0

