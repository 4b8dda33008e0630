"""`difflens train` and `difflens export`: flags built from the training configs, thin over the Python API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from difflens.configs import add_config_arguments, config_from_args, given

from .train.config import ITDATrainConfig, RunConfig
from .train.family_configs import SAE_TRAIN_CONFIGS


@dataclass
class TrainCommand:
    """Which data a `difflens train` run reads and where it writes."""

    store: str
    """activation store folder (or a .safetensors file with an 'acts' tensor)"""
    site: str | None = None
    """site name, e.g. double.18.img.out (needed when the store holds several)"""
    step: list[int] | str | None = None
    """denoising step (needed when several are stored); several (0,3,7) or all: one dictionary across those steps,
    every batch balanced per step (see --step-normalization)"""
    method: Literal["sae", "itda", "neurons"] = "sae"
    """what to train: an SAE (family: --arch), ITDA, or the MLP-neuron baseline (no training)"""
    arch: Literal["topk", "batchtopk", "matryoshka", "jumprelu"] = "topk"
    """SAE family (--method sae): topk (k per token); batchtopk (top batch·k over the batch in training, a learned
    threshold at inference); matryoshka (nested --prefixes each reconstruct, on --base batchtopk or topk);
    jumprelu (learned per-latent thresholds, --k the target mean L0 pulled by --l0-coef)"""
    split: Literal["auto", "all", "train"] = "auto"
    """rows to train on: auto = the train split when the store is split by image, else all"""
    out: str = "runs/train"
    """run folder; the dictionary goes to <out>/<site>/"""
    quiet: bool = False
    """no progress bar"""


@dataclass
class ExportCommand:
    """`difflens export`: write a trained SAE in another library's format, normalisation folded in."""

    run: str
    """dictionary folder (<run>/<site>/ with cfg.json)"""
    out: str
    """folder to write"""
    format: Literal["saelens", "sparsify"] = "saelens"
    """saelens: cfg.json + sae_weights.safetensors for sae-lens; sparsify: sparsify's layout"""
    hook_name: str | None = None
    """label stored as sae-lens's hook_name (default: the dictionary's site)"""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a dictionary (TopK SAE, ITDA or neuron baseline) on one stored site",
                              description="Flags shared by SAE and ITDA (k, normalization, batch size, tokens, seed) "
                                          "keep each method's own default unless given.")
    add_config_arguments(p.add_argument_group("data and output"), TrainCommand)
    add_config_arguments(p.add_argument_group("SAE and ITDA settings"), *SAE_TRAIN_CONFIGS.values(), ITDATrainConfig)
    add_config_arguments(p.add_argument_group("run"), RunConfig, exclude={"out", "progress"})
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("export", help="export a TopK SAE for sae-lens (or sparsify) with its normalisation folded in")
    add_config_arguments(e, ExportCommand)
    e.set_defaults(func=cmd_export)


def train_from_args(args) -> object:
    """Build the configs from the flags given and train; returns the dictionary."""
    from difflens.dictionaries.train.data import resolve_data

    cmd = config_from_args(TrainCommand, args)
    data = resolve_data(cmd.store, cmd.site, cmd.step, cmd.split)
    folder = f"{cmd.out}/{data.site or 'acts'}"
    run = config_from_args(RunConfig, args, out=folder, progress=not cmd.quiet)
    sae_config = SAE_TRAIN_CONFIGS[cmd.arch]
    chosen = {"sae": sae_config, "itda": ITDATrainConfig}.get(cmd.method)
    if cmd.arch != "topk" and cmd.method != "sae":
        raise ValueError(f"--arch {cmd.arch} applies to --method sae only")
    if chosen is not None:
        others = [c for c in (*SAE_TRAIN_CONFIGS.values(), ITDATrainConfig) if c is not chosen]
        stray = sorted({name for c in others for name in given(args, c)} - set(given(args, chosen)))
        if stray:
            what = f"--method {cmd.method}" + (f" --arch {cmd.arch}" if cmd.method == "sae" else "")
            raise ValueError(f"--{', --'.join(s.replace('_', '-') for s in stray)} do(es) not apply to {what}")
    if cmd.method == "sae":
        from .train.sae import train_sae

        dictionary = train_sae(data, config_from_args(sae_config, args), run)
    elif cmd.method == "itda":
        from .train.itda import train_itda

        dictionary = train_itda(data, config_from_args(ITDATrainConfig, args), run)
    else:
        from .train.neurons import neuron_baseline

        dictionary = neuron_baseline(data, k=getattr(args, "k", None), out=folder,
                                     overwrite=run.overwrite or not run.resume)
    return dictionary, folder


def cmd_train(args) -> int:
    from difflens.distributed import rank_and_world

    _, folder = train_from_args(args)
    if rank_and_world()[0] == 0:
        print(f"wrote {folder}")
    return 0


def cmd_export(args) -> int:
    from .io import export_folded, load_dictionary
    from .saelens import export_saelens

    cmd = config_from_args(ExportCommand, args)
    dictionary = load_dictionary(cmd.run)
    if cmd.format == "saelens":
        path = export_saelens(dictionary, cmd.out, hook_name=cmd.hook_name or dictionary.site,
                              metadata={"difflens_site": dictionary.site, "difflens_step": dictionary.step})
    else:
        path = export_folded(dictionary, cmd.out)
    print(f"wrote {path} ({cmd.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run these commands alone (without the other areas): ``python -m difflens.dictionaries.cli``."""
    from difflens.configs import run_parser

    parser = argparse.ArgumentParser(prog="difflens")
    register(parser.add_subparsers(dest="command", required=True))
    return run_parser(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
