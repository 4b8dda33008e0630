"""`difflens features build|show|truth|scan|extra-concepts|readability` and `difflens autointerp`: flags from their
configs, thin over the API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from difflens.configs import add_command, add_config_arguments, config_from_args, given


@dataclass
class BuildCommand:
    """`difflens features build`: index the latents of one dictionary (or every dictionary of a run folder)."""

    run: str
    """dictionary folder, or a run folder holding several"""
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


@dataclass
class ShowCommand:
    """`difflens features show`: a feature card, or a grid of many latents."""

    index: str
    """feature index folder"""
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
    """feature index folder (its dictionary and store are used)"""
    run: str | None = None
    """or a dictionary folder"""
    out: str | None = None
    """truth.json path (default: beside the index or dictionary)"""
    controls: list[str] = field(default_factory=lambda: ["random", "init"])
    """controls measured with the same rules: random (random directions), init (the SAE before training)"""
    sparse_sizes: list[int] = field(default_factory=list)
    """sparse-probe sizes, e.g. 1,4,16 (SAEBench's k-sparse probing on latents, random directions and raw
    dimensions); off by default: on the demo's 768-latent SAE they add about 90 s to 42 s"""
    bootstrap: int = 200
    """bootstrap resamples of the held-out images for intervals (0: none)"""


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
    """feature index folder(s); several: also compare them (score histograms per method)"""
    out: str | None = None
    """comparison PNG when several indexes are given (default: autointerp_<backend>.png beside the first)"""


def register(subparsers) -> None:
    from .autointerp import AutointerpConfig
    from .extra_concepts import ExtraConceptsConfig
    from .index import IndexConfig
    from .scan import ScanConfig
    from .vlm import VLMConfig

    f = subparsers.add_parser("features", help="feature index, feature cards, ground-truth scores")
    fsub = f.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    b = fsub.add_parser("build", help="index every latent: frequency, max/mean, histogram, top and quantile images")
    add_config_arguments(b.add_argument_group("what"), BuildCommand)
    add_config_arguments(b.add_argument_group("index"), IndexConfig)
    b.set_defaults(func=cmd_build)
    add_command(fsub, "show", "a feature card (top images with heatmaps, histogram, frequency by step)", cmd_show,
                ShowCommand)
    add_command(fsub, "truth", "match latents to the shapes world's concepts, beside a random floor", cmd_truth,
                TruthCommand)
    add_command(fsub, "scan", "ground truth of one small SAE per (site, step) of a store: where the concepts live",
                cmd_scan, ScanConfig)
    add_command(fsub, "extra-concepts", "one SAE's ground truth with extra candidate concept families (tone, edge, "
                "bgpos) appended to the labels", cmd_extra_concepts, ExtraConceptsConfig)
    add_command(fsub, "readability", "whether colour latents' cards show their colour, per heatmap style",
                cmd_readability, ReadabilityCommand)
    a = subparsers.add_parser("autointerp", help="explain latents and score the explanations on held-out images")
    add_config_arguments(a.add_argument_group("what"), AutointerpCommand)
    add_config_arguments(a.add_argument_group("autointerp"), AutointerpConfig)
    add_config_arguments(a.add_argument_group("openai backend"), VLMConfig)
    a.set_defaults(func=cmd_autointerp)


def _dictionaries(run: Path) -> list[Path]:
    from difflens.evaluation.cli import dictionary_folders

    return dictionary_folders(run)


def cmd_build(args) -> int:
    from difflens.dictionaries.io import load_dictionary

    from .index import IndexConfig, build_feature_index

    cmd = config_from_args(BuildCommand, args)
    cfg = config_from_args(IndexConfig, args)
    folders = _dictionaries(Path(cmd.run))
    for folder in folders:
        if cmd.out is None:
            out = folder / "index"
        else:
            out = Path(cmd.out) / folder.name if len(folders) > 1 else Path(cmd.out)
        index = build_feature_index(load_dictionary(folder), cmd.store, steps=cmd.steps, out=out, config=cfg,
                                    device=cmd.device, progress=not cmd.quiet)
        alive = int(index.alive().sum())
        print(f"{folder.name}: {alive} of {index.num_latents} latents active on {sum(index.tokens.values()):,} "
              f"tokens of {index.site} steps {index.steps} ({index.split}) -> {out}")
    return 0


def cmd_show(args) -> int:
    from .cards import feature_card, feature_grid
    from .index import FeatureIndex

    cmd = config_from_args(ShowCommand, args)
    if not cmd.feature:
        raise ValueError("--feature is required: one latent (a card) or several (a grid), e.g. --feature 17")
    index = FeatureIndex.load(cmd.index)
    if len(cmd.feature) == 1:
        out = cmd.output or index.path / "cards" / f"latent-{cmd.feature[0]}.png"
        path = feature_card(index, cmd.feature[0], out, n_images=cmd.images, style=cmd.style)
    else:
        out = cmd.output or index.path / "cards" / "grid.png"
        path = feature_grid(index, cmd.feature, out, n_images=min(cmd.images, 8), style=cmd.style)
    print(f"wrote {path}")
    return 0


def cmd_truth(args) -> int:
    from difflens.dictionaries.io import load_dictionary

    from .index import FeatureIndex
    from .truth import truth_report, write_truth

    cmd = config_from_args(TruthCommand, args)
    if (cmd.index is None) == (cmd.run is None):
        raise ValueError("give --index DIR or --run DICTIONARY_DIR")
    index = autointerp = None
    if cmd.index is not None:
        index = FeatureIndex.load(cmd.index)
        dictionary, store, where = index.dictionary, index.store, index.path
        # oracle autointerp results beside the index: a perfect judge scores the same test examples
        results = Path(cmd.index) / "autointerp" / "oracle" / "results.json"
        autointerp = json.loads(results.read_text()) if results.exists() else None
    else:
        dictionary = load_dictionary(cmd.run)
        store, where = None, Path(cmd.run)
    report = truth_report(dictionary, store, controls=tuple(cmd.controls), sparse_sizes=tuple(cmd.sparse_sizes),
                          bootstrap=cmd.bootstrap, autointerp=autointerp, index=index)
    out = Path(cmd.out) if cmd.out else Path(where) / "truth.json"
    write_truth(report, out)
    print(json.dumps({k: report[k] for k in ("dictionary", "site", "step", "alive", "headline", "explained_share",
                                             "explained_share_random") if k in report}))
    print(f"wrote {out}")
    return 0


def cmd_scan(args) -> int:
    from .scan import SUMMARY_FILE, ScanConfig, scan_tables, truth_scan

    cfg = config_from_args(ScanConfig, args)
    summary = truth_scan(cfg, log=lambda m: print(f"[scan] {m}", flush=True))
    print(scan_tables(summary))
    print(f"reports in {cfg.out}/<site>@<step>.json, summary {Path(cfg.out) / SUMMARY_FILE}")
    print(json.dumps(summary["rows"]))
    return 0


def cmd_extra_concepts(args) -> int:
    from .extra_concepts import ExtraConceptsConfig, extra_concepts

    result = extra_concepts(config_from_args(ExtraConceptsConfig, args), log=lambda m: print(m, flush=True))
    print(json.dumps(result))
    return 0


def cmd_readability(args) -> int:
    from .readability import card_readability, format_readability

    cmd = config_from_args(ReadabilityCommand, args)
    rows = []
    for folder in _dictionaries(Path(cmd.run)):
        if (folder / "truth.json").exists() and (folder / "index").exists():
            rows.append(card_readability(folder, cmd.images, cmd.min_f1))
            print(format_readability(rows[-1]))
    if not rows:
        raise ValueError(f"no dictionary of {cmd.run} has both truth.json and index/ (run `difflens features build` "
                         "and `difflens features truth` first)")
    print(json.dumps(rows))
    return 0


def cmd_autointerp(args) -> int:
    from .autointerp import AutointerpConfig, compare_methods, run_autointerp
    from .index import FeatureIndex
    from .vlm import VLMConfig, format_dry_run

    cmd = config_from_args(AutointerpCommand, args)
    if not cmd.index:
        raise ValueError("--index is required (a feature index folder from `difflens features build`)")
    cfg = config_from_args(AutointerpConfig, args)
    vlm = config_from_args(VLMConfig, args)
    if cfg.backend == "oracle" and given(args, VLMConfig):
        raise ValueError("VLM flags (--base-url, --model, ...) apply to --backend openai only")
    summaries = {}
    for folder in cmd.index:
        index = FeatureIndex.load(folder)
        summary = run_autointerp(index, cfg, vlm_config=vlm)
        if cfg.dry_run:
            print(format_dry_run(summary["dry_run"]))
            print(f"then {summary['judge_calls']} judge calls (one image each)")
            continue
        name = f"{index.dictionary_kind}:{Path(index.dictionary_path or folder).name}"
        summaries[name] = summary
        print(f"{name}: {summary['explained']} latents explained, {len(summary['failed'])} failed, "
              f"mean score {summary['mean_score']}  ({summary['note']})")
    if len(summaries) > 1:
        out = Path(cmd.out) if cmd.out else Path(cmd.index[0]).parent / f"autointerp_{cfg.backend}.png"
        table = compare_methods(summaries, out)
        print(json.dumps(table, indent=1))
        print(f"wrote {out}")
    return 0
