"""`difflens sites`, `difflens capture`, `difflens capture info`, `difflens capture split` -- thin over the capture and
store APIs (`cache` is the old spelling of `capture` and still works).

The flags come from the dataclasses: a capture's from `CaptureConfig` (model loading from `LoadOptions`), the
rest from the small command dataclasses below, so the CLI and the Python API share defaults and help texts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

from difflens.adapters.registry import DEFAULT_MODEL, LoadOptions
from difflens.capture.runner import CaptureConfig
from difflens.configs import add_config_arguments, config_from_args, field_docs, flag_name, given


@dataclass
class SitesCommand:
    """`difflens sites`: a model's hook sites and their shapes (model loading: `LoadOptions`)."""

    model: str = DEFAULT_MODEL
    """model name: embedded, embedded-rich, embedded-tiny, embedded:PATH, flux-schnell, flux-dev, flux:ID_OR_PATH,
    sdxl-turbo, sdxl, sdxl:ID_OR_PATH, flux-tiny, sdxl-tiny"""
    resolution: int | None = None
    """image size in px; None: the model's"""
    json: bool = False
    """print JSON instead of a table"""


@dataclass
class CaptureCommand:
    """`difflens capture` options of a capture that are not `CaptureConfig` settings."""

    out: str | None = None
    """store folder to capture into (required for a capture); rerun the same command to resume"""
    quiet: bool = False
    """no progress bar"""


@dataclass
class StoreCommand:
    """`difflens capture info DIR [--verify]` and `difflens capture split DIR --holdout F [--seed S]`."""

    action: Literal["info", "split"]
    """'info DIR' prints what a store holds; 'split DIR' re-chooses its held-out images"""
    dir: str
    """store folder"""
    verify: bool = False
    """with info: checksum every shard"""
    holdout: float = 0.1
    """with split: fraction of the images held out, chosen by image (0: no split)"""
    seed: int = 0
    """with split: seed of the held-out choice"""


_STORE_FLAGS = {"info": {"verify"}, "split": {"holdout", "seed"}}


def _flags(names) -> str:
    return ", ".join(flag_name(n) for n in sorted(names))


def register(subparsers) -> None:
    p = subparsers.add_parser("sites", help="list a model's hook sites and their shapes")
    add_config_arguments(p, SitesCommand)
    add_config_arguments(p.add_argument_group("model loading"), LoadOptions)
    p.set_defaults(func=cmd_sites)

    p = subparsers.add_parser(
        "capture", aliases=["cache"],
        help="capture activations into a store (`capture info DIR` describes one, `capture split DIR` re-splits it; "
             "`cache` is the old spelling)",
        description="Capture activations: difflens capture --model M --sites S --out DIR. "
                    "Describe a store: difflens capture info DIR [--verify]. "
                    "Choose its held-out images anew: difflens capture split DIR --holdout F [--seed S]. "
                    "Multi-process: torchrun --nproc_per_node N --no-python difflens capture ... "
                    "(`difflens cache` is the old name of this command and still works.)")
    p.add_argument("action", nargs="?", choices=list(_STORE_FLAGS), help=_doc(StoreCommand, "action"))
    p.add_argument("dir", nargs="?", help=f"{_doc(StoreCommand, 'dir')} (with 'info' or 'split')")
    capture = p.add_argument_group("capture (settings of CaptureConfig; --holdout and --seed also serve 'split')")
    add_config_arguments(capture, CaptureCommand, only={"out"})
    add_config_arguments(capture, CaptureConfig, StoreCommand,
                         exclude={"out", "load", "progress", "action", "dir", "verify"})
    add_config_arguments(capture, CaptureCommand, exclude={"out"})
    add_config_arguments(p.add_argument_group("model loading"), LoadOptions)
    add_config_arguments(p.add_argument_group(
        "info and split", "info DIR [--verify]; split DIR [--holdout F] [--seed S]: with split, --holdout and "
                          "--seed (above) are the fraction held out and the seed that chooses them"),
        StoreCommand, only={"verify"})
    p.set_defaults(func=cmd_capture)


def _doc(cls: type, name: str) -> str:
    return field_docs(cls).get(name, "")


def cmd_sites(args) -> int:
    from difflens.adapters import load_adapter

    cmd = config_from_args(SitesCommand, args)
    adapter = load_adapter(cmd.model, config_from_args(LoadOptions, args))
    sites = adapter.sites(cmd.resolution)
    if cmd.json:
        print(json.dumps([{"name": s.name, "stream": s.stream, "kind": s.kind, "tokens": s.tokens, "dim": s.dim,
                           "grid": s.grid} for s in sites], indent=1))
        return 0
    res = adapter.default_resolution if cmd.resolution is None else cmd.resolution
    print(f"{adapter.name} at {res} px  (default sites: {', '.join(adapter.default_sites)})")
    print(f"{'site':<44} {'stream':>6} {'kind':>6} {'tokens':>7} {'dim':>6} {'grid':>7}")
    for s in sites:
        grid = "x".join(map(str, s.grid)) if s.grid else "-"
        print(f"{s.name:<44} {s.stream:>6} {s.kind:>6} {s.tokens:>7} {s.dim:>6} {grid:>7}")
    return 0


def _given_flags(args) -> set[str]:
    """Every option of `difflens capture` the user gave (field names)."""
    found: set[str] = set()
    for cls in (CaptureConfig, LoadOptions, CaptureCommand, StoreCommand):
        found |= set(given(args, cls))
    return found - {"action", "dir"}


def store_command(args) -> StoreCommand:
    """`capture info DIR` / `capture split DIR` from the flags given (refuses capture flags)."""
    if not args.dir:
        raise ValueError(f"usage: difflens capture {args.action} DIR" + (" --holdout F [--seed S]" if args.action == "split" else ""))
    stray = _given_flags(args) - _STORE_FLAGS[args.action]
    if stray:
        raise ValueError(f"{_flags(stray)} do(es) not apply to `difflens capture {args.action}`")
    return config_from_args(StoreCommand, args)


def capture_config(args) -> CaptureConfig:
    """The CaptureConfig of `difflens capture --out DIR ...`: flags given, dataclass defaults for the rest."""
    if args.dir:
        raise ValueError(f"unexpected argument {args.dir!r}: the store folder is given with --out")
    stray = _given_flags(args) & {"verify"}
    if stray:
        raise ValueError(f"{_flags(stray)} applies to `difflens capture info DIR`, not to a capture")
    cmd = config_from_args(CaptureCommand, args)
    if cmd.out is None:
        raise ValueError("--out DIR is required (the store folder)")
    cfg = config_from_args(CaptureConfig, args, out=cmd.out, load=config_from_args(LoadOptions, args),
                           progress=not cmd.quiet)
    if isinstance(cfg.steps_to_record, str) and cfg.steps_to_record != "all":
        raise ValueError(f"--steps-to-record takes comma-separated step numbers or 'all', got {cfg.steps_to_record!r}")
    return cfg


def cmd_capture(args) -> int:
    from difflens.store import ActivationStore

    if args.action is not None:
        cmd = store_command(args)
        store = ActivationStore.open(cmd.dir)
        if cmd.action == "split":
            from difflens.store.split import describe_holdout

            held = store.set_holdout(cmd.holdout, seed=cmd.seed)
            print(f"held out {len(held['image_ids'])} of {store.meta.get('n_images')} images: "
                  f"{describe_holdout(store.holdout, store.meta.get('n_images'))}")
            return 0
        print(store.describe())
        if cmd.verify:
            store.verify()
            print("verified: every shard's checksum matches its manifest")
        return 0
    from difflens.capture.runner import run_capture

    path = run_capture(capture_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(ActivationStore.open(path).describe())
    return 0

