"""`difflens features index|show|truth|readability` and `difflens autointerp`: flags from their
configs, thin over the API.

`features index` builds what the API calls a feature index (`feature_index`); `features build` is its old name and
still works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from difflens.configs import add_command, add_config_arguments, config_from_args, given
from difflens.reading import read_json


@dataclass
class BuildCommand:
    """`difflens features index`: index the latents of one dictionary (or every dictionary of a run folder)."""

    run: str
    """dictionary folder, or a run folder holding several (a demo run, a `train --out` folder)"""
    store: str | None = None
    """store to index (default: the store each dictionary was trained on)"""
    steps: list[int] | str | None = None
    """denoising steps: the dictionary's own (default), 'all', or 0,3,7"""
    out: str | None = None
    """index folder (default: <dictionary>/index); with several dictionaries, <out>/<name>"""
    device: str = "cpu"
    """where encoding runs"""
    quiet: bool = False
    """no progress bar"""
    overwrite: bool = False
    """start over, replacing an index there (of other settings, or unfinished) instead of refusing or resuming it"""


@dataclass
class ShowCommand:
    """`difflens features show`: a feature card, or a grid of many latents."""

    index: str
    """feature index folder, or a dictionary or run folder holding one index"""
    feature: list[int] = field(default_factory=list, metadata={"aliases": ["--features"]})
    """latent(s): one gives a card, several a grid"""
    output: str | None = field(default=None, metadata={"aliases": ["-o"]})
    """PNG to write (default: <index>/cards/latent-<i>.png or grid.png)"""
    images: int = 8
    """top images per latent"""
    style: Literal["blue", "spotlight"] = "blue"
    """how the activation is drawn: "blue" paint (the FLUX paper's), or "spotlight" (true colours where the
    latent fires, the rest faded to grey: a colour latent's colour stays visible)"""


@dataclass
class TruthCommand:
    """`difflens features truth`: match every latent to the shapes world's concepts (embedded model only)."""

    index: str | None = None
    """feature index folder (its dictionary and store are used), or a run folder: every index it holds"""
    run: str | None = None
    """or a dictionary folder, or a run folder: every dictionary it holds"""
    out: str | None = None
    """truth.json path (default: beside the index or dictionary); with several, <out>/<name>/truth.json"""
    controls: list[str] = field(default_factory=lambda: ["random", "init"])
    """controls measured with the same rules: random (random directions), init (the SAE before training)"""
    sparse_sizes: list[int] = field(default_factory=list)
    """sparse-probe sizes, e.g. 1,4,16 (SAEBench's k-sparse probing on latents, random directions and raw
    dimensions); off by default: on the demo's 768-latent SAE they add about 90 s to 42 s"""
    bootstrap: int = 200
    """bootstrap resamples of the held-out images for intervals (0: none)"""
    overwrite: bool = False
    """replace a truth.json of another dictionary or other controls instead of refusing it"""


@dataclass
class ReadabilityCommand:
    """`difflens features readability`: can a reader see a colour latent's colour on its card, per style?"""

    run: str = "runs/demo"
    """run folder or dictionary folder (dictionaries with truth.json and index/ are measured)"""
    images: int = 6
    """top images per latent (the demo grid's 6)"""
    min_f1: float = 0.5
    """held-out F1 a latent's colour concept needs for it to count as a colour latent"""


@dataclass
class AutointerpCommand:
    """`difflens autointerp`: which indexes to explain and where the results go."""

    index: list[str] = field(default_factory=list)
    """feature index folder(s), or dictionary / run folders (every index they hold); several: also compare them
    (score histograms per method)"""
    out: str | None = None
    """comparison PNG when several indexes are given (default: autointerp_<backend>.png beside the first)"""
    overwrite: bool = False
    """replace results made with other settings instead of refusing them"""


def register(subparsers) -> None:
    from .autointerp import AutointerpConfig
    from .index import IndexConfig
    from .vlm import VLMConfig

    f = subparsers.add_parser("features", help="feature index, feature cards, ground-truth scores")
    fsub = f.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    b = fsub.add_parser("index", aliases=["build"],
                        help="index every latent: frequency, max/mean, histogram, top and quantile images (`build`: "
                             "the old name)")
    add_config_arguments(b.add_argument_group("what"), BuildCommand)
    add_config_arguments(b.add_argument_group("index"), IndexConfig)
    b.set_defaults(func=cmd_build)
    add_command(fsub, "show", "a feature card (top images with heatmaps, histogram, frequency by step)", cmd_show,
                ShowCommand)
    add_command(fsub, "truth", "match latents to the shapes world's concepts, beside a random floor", cmd_truth,
                TruthCommand)
    add_command(fsub, "readability", "whether colour latents' cards show their colour, per heatmap style",
                cmd_readability, ReadabilityCommand)
    a = subparsers.add_parser("autointerp", help="explain latents and score the explanations on held-out images")
    add_config_arguments(a.add_argument_group("what"), AutointerpCommand)
    add_config_arguments(a.add_argument_group("autointerp"), AutointerpConfig)
    add_config_arguments(a.add_argument_group("openai backend"), VLMConfig)
    a.set_defaults(func=cmd_autointerp)


def cmd_build(args) -> int:
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.run_layout import find_dictionaries, index_folder

    from .index import IndexConfig, build_feature_index

    cmd = config_from_args(BuildCommand, args)
    cfg = config_from_args(IndexConfig, args)
    folders = find_dictionaries(cmd.run)
    for name, folder in folders.items():
        if cmd.out is None:
            out = index_folder(folder)
        else:
            out = Path(cmd.out) / name if len(folders) > 1 else Path(cmd.out)
        index = build_feature_index(load_dictionary(folder), cmd.store, steps=cmd.steps, out=out, config=cfg,
                                    device=cmd.device, progress=not cmd.quiet, resume=not cmd.overwrite)
        alive = int(index.alive().sum())
        print(f"{name}: {alive} of {index.num_latents} latents active on {sum(index.tokens.values()):,} "
              f"tokens of {index.site} steps {index.steps} ({index.split}) -> {out}")
    return 0


def cmd_show(args) -> int:
    from difflens.store.run_layout import card_path, one_index

    from .cards import feature_card, feature_grid
    from .index import FeatureIndex

    cmd = config_from_args(ShowCommand, args)
    if not cmd.feature:
        raise ValueError("--feature is required: one latent (a card) or several (a grid), e.g. --feature 17")
    index = FeatureIndex.load(one_index(cmd.index))
    if len(cmd.feature) == 1:
        out = cmd.output or card_path(index.path, cmd.feature[0])
        path = feature_card(index, cmd.feature[0], out, n_images=cmd.images, style=cmd.style)
    else:
        out = cmd.output or card_path(index.path)
        path = feature_grid(index, cmd.feature, out, n_images=min(cmd.images, 8), style=cmd.style)
    print(f"wrote {path}")
    return 0


def cmd_truth(args) -> int:
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.run_layout import autointerp_results, find_dictionaries, find_indexes, truth_path

    from .index import FeatureIndex
    from .truth import truth_report, write_truth

    cmd = config_from_args(TruthCommand, args)
    if (cmd.index is None) == (cmd.run is None):
        raise ValueError("give --index DIR or --run DICTIONARY_DIR")
    targets = find_indexes(cmd.index) if cmd.index is not None else find_dictionaries(cmd.run)
    for name, folder in targets.items():
        index = autointerp = None
        if cmd.index is not None:
            index = FeatureIndex.load(folder)
            dictionary, store = index.dictionary, index.store
            # oracle autointerp results beside the index: a perfect judge scores the same test examples
            results = autointerp_results(folder, "oracle")
            autointerp = read_json(results, "autointerp results", expect=dict) if results.exists() else None
        else:
            dictionary, store = load_dictionary(folder), None
        report = truth_report(dictionary, store, controls=tuple(cmd.controls), sparse_sizes=tuple(cmd.sparse_sizes),
                              bootstrap=cmd.bootstrap, autointerp=autointerp, index=index)
        if cmd.out is None:
            out = truth_path(folder)
        else:
            out = truth_path(Path(cmd.out) / name) if len(targets) > 1 else Path(cmd.out)
        write_truth(report, out, overwrite=cmd.overwrite)
        print(json.dumps({k: report[k] for k in ("dictionary", "site", "step", "alive", "headline",
                                                 "explained_share", "explained_share_random") if k in report}))
        print(f"wrote {out}")
    return 0


def cmd_readability(args) -> int:
    from difflens.store.run_layout import find_dictionaries, index_folder, truth_path

    from .readability import card_readability, format_readability

    cmd = config_from_args(ReadabilityCommand, args)
    rows = []
    for folder in find_dictionaries(cmd.run).values():
        if truth_path(folder).exists() and index_folder(folder).exists():
            rows.append(card_readability(folder, cmd.images, cmd.min_f1))
            print(format_readability(rows[-1]))
    if not rows:
        raise ValueError(f"no dictionary of {cmd.run} has both truth.json and index/ (run `difflens features index` "
                         "and `difflens features truth` first)")
    print(json.dumps(rows))
    return 0


def cmd_autointerp(args) -> int:
    from difflens.store.run_layout import find_indexes

    from .autointerp import AutointerpConfig, compare_methods, run_autointerp
    from .index import FeatureIndex
    from .vlm import VLMConfig, format_dry_run

    cmd = config_from_args(AutointerpCommand, args)
    if not cmd.index:
        raise ValueError("--index is required (a feature index folder from `difflens features index`)")
    cfg = config_from_args(AutointerpConfig, args)
    vlm = config_from_args(VLMConfig, args)
    if cfg.backend == "oracle" and given(args, VLMConfig):
        raise ValueError("VLM flags (--base-url, --model, ...) apply to --backend openai only")
    summaries = {}
    folders = [index for given_folder in cmd.index for index in find_indexes(given_folder).values()]
    for folder in folders:
        index = FeatureIndex.load(folder)
        summary = run_autointerp(index, cfg, vlm_config=vlm, overwrite=cmd.overwrite)
        if cfg.dry_run:
            print(format_dry_run(summary["dry_run"]))
            print(f"then {summary['judge_calls']} judge calls (one image each)")
            continue
        name = f"{index.dictionary_kind}:{Path(index.dictionary_path or folder).name}"
        summaries[name] = summary
        print(f"{name}: {summary['explained']} latents explained, {len(summary['failed'])} failed, "
              f"mean score {summary['mean_score']}  ({summary['note']})")
    if len(summaries) > 1:
        out = Path(cmd.out) if cmd.out else Path(folders[0]).parent / f"autointerp_{cfg.backend}.png"
        table = compare_methods(summaries, out)
        print(json.dumps(table, indent=1))
        print(f"wrote {out}")
    return 0
