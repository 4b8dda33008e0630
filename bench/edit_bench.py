"""The editing benchmark on a run folder, one category group at a time, merged into one results.json.

    nice -n 5 .venv/bin/python bench/edit_bench.py [--run runs/demo] [--n 20] [--out runs/demo/edit_bench]
        [--groups color,shape,size background,remove,add move] [any `difflens bench edits` flag ...]
    nice -n 5 .venv/bin/python bench/edit_bench.py --merge-only --out runs/demo/edit_bench

Each group is one `run_edit_bench` call writing ``<out>/<group>.json`` (a group already written is skipped, so
an interrupted run resumes by group); then ``<out>/results.json`` joins them (`merge_results`), with its table
(printed) and ``results_curves.png``. Flags not named here go to `BenchConfig` unchanged (e.g. ``--ks 8,32``).
Methods default to the demo's four dictionaries (whitened SAE, plain SAE, ITDA, MLP neurons) and dense,
random, swap. One CPU thread.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from difflens.configs import add_config_arguments, config_from_args  # noqa: E402
from difflens.steering.bench.run import BenchConfig, format_bench_table, merge_results, run_edit_bench  # noqa: E402

DEFAULT_GROUPS = ["color,shape,size", "background,remove,add", "move"]
DEFAULT_METHODS = ["sae_pca", "sae_none", "itda", "neurons", "dense", "random", "swap"]


def main(argv=None) -> int:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", default=DEFAULT_GROUPS, help="category groups, one run each")
    parser.add_argument("--merge-only", action="store_true", help="only merge the group files already written")
    add_config_arguments(parser, BenchConfig, exclude=("out", "categories"))
    parser.add_argument("--out", default="runs/demo/edit_bench", help="folder of the group files and results.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    files = []
    for group in args.groups:
        path = out / f"{group.replace(',', '_')}.json"
        files.append(path)
        if path.exists() or args.merge_only:
            continue
        overrides = {"categories": group.split(","), "out": str(path)}
        if "run" not in vars(args):
            overrides["run"] = "runs/demo"
        if "methods" not in vars(args):
            overrides["methods"] = DEFAULT_METHODS
        run_edit_bench(config_from_args(BenchConfig, args, **overrides))
    found = [f for f in files if f.exists()]
    if not found:
        print(f"no group results in {out}", file=sys.stderr)
        return 1
    merged = merge_results(found, out / "results.json")
    print(format_bench_table(merged["rows"], merged.get("random_reference")))
    print("pairs kept/tried: " + ", ".join(f"{c} {v['kept']}/{v['tried']}" for c, v in merged["pair_counts"].items()))
    print(f"wrote {out / 'results.json'} and {merged['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
