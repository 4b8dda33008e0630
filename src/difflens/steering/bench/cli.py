"""`difflens bench edits`: the editing benchmark, flags from `BenchConfig`."""

from __future__ import annotations


def register(subparsers) -> None:
    from difflens.configs import add_command

    from .run import BenchConfig

    b = subparsers.add_parser("bench", help="benchmarks: edits (RIEBench's editing protocol, scored by the oracle)")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    add_command(bsub, "edits", "edit source generations toward target prompts with dictionary features, the dense "
                "activation difference, a random control and prompt swap; oracle scores with bootstrap intervals",
                cmd_edits, BenchConfig)


def cmd_edits(args) -> int:
    from difflens.configs import config_from_args

    from .run import BenchConfig, format_bench_table, run_edit_bench

    config = config_from_args(BenchConfig, args)
    results = run_edit_bench(config)
    print(format_bench_table(results["rows"], results.get("random_reference")))
    counts = ", ".join(f"{c} {v['kept']}/{v['tried']}" for c, v in results["pair_counts"].items())
    print(f"pairs kept/tried per category: {counts}")
    if config.out:
        print(f"wrote {config.out} and {results['plot']}")
    return 0
