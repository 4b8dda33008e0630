"""`difflens bench edits`: the editing benchmark, flags from `BenchConfig` (and `GroupsCommand`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GroupsCommand:
    """`bench edits --groups`: run the categories in groups, one results file each, then merge them."""

    groups: list[str] = field(default_factory=list)
    """category groups, '+' within a group, e.g. color+shape+size,background+remove+add,move: one run per group
    (written beside --out, skipped when already there, so a run resumes by group), merged into --out"""
    merge_only: bool = False
    """with --groups: only merge the group files already written"""


def register(subparsers) -> None:
    from difflens.configs import add_command

    from .run import BenchConfig

    b = subparsers.add_parser("bench", help="benchmarks: edits (RIEBench's editing protocol, scored by the oracle "
                              "on the shapes world, against reference generations on any model)")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    add_command(bsub, "edits", "edit source generations toward target prompts with dictionary features, the dense "
                "activation difference, a random control and prompt swap; oracle scores (shapes world) and PSNR / "
                "SSIM / LPIPS / CLIP against the reference generations, with bootstrap intervals",
                cmd_edits, BenchConfig, GroupsCommand)


def cmd_edits(args) -> int:
    from difflens.configs import config_from_args

    from .groups import run_by_groups
    from .run import BenchConfig, format_bench_table, run_edit_bench

    config = config_from_args(BenchConfig, args)
    cmd = config_from_args(GroupsCommand, args)
    if cmd.groups:
        results = run_by_groups(config, [g.split("+") for g in cmd.groups], merge_only=cmd.merge_only)
    elif cmd.merge_only:
        raise ValueError("--merge-only needs --groups (the groups whose files to merge)")
    else:
        results = run_edit_bench(config)
    print(format_bench_table(results["rows"], results.get("random_reference"), results.get("scorers")))
    counts = ", ".join(f"{c} {v['kept']}/{v['tried']}" for c, v in results["pair_counts"].items())
    print(f"pairs kept/tried per category: {counts}")
    if config.out:
        print(f"wrote {config.out} and {results['plot']}")
    return 0
