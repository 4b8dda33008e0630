"""Kill -9 anywhere, lose nothing: every long stage, SIGKILLed at seeded random moments and rerun, against an
uninterrupted run (tiny settings: an embedded-tiny store of 24 images, a 48-latent SAE, a 12-step world model).

    python bench/kill_resume.py [--kills 3] [--seed 0] [--stages capture,train-sae] [--work DIR]

Prints per stage how many kills it made (and how many landed while it still ran), whether the rerun matched (a
deterministic stage: identical files; every stage: complete files, no temporaries or locks left), then a summary
line and the JSON of it all last. The harness and the stage table live in tests/killing.py (the fast cases run in
tests/test_kill_resume.py); it is loaded here by path.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path


def load_harness():
    path = Path(__file__).resolve().parents[1] / "tests" / "killing.py"
    spec = importlib.util.spec_from_file_location("killing", path)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["killing"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    K = load_harness()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per stage before the rerun")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--stages", default="", help="comma list of stage names (default: all, in pipeline order; "
                                                     "the stages a stage takes as input make their references first)")
    parser.add_argument("--work", default="", help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    wanted = [s for s in args.stages.split(",") if s] or [s.name for s in K.STAGES]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="difflens-kill-"))
    refs: dict[str, Path] = {}
    rows = []
    start = time.time()
    print(f"{'stage':<20} {'kills':>5} {'killed':>6} {'ref s':>6} {'rerun s':>7}  rerun matched")
    for stage in K.STAGES:
        if stage.name not in wanted:
            continue
        row = K.kill_and_resume(stage, work, refs, kills=args.kills, seed=args.seed)
        rows.append(row)
        print(f"{row['stage']:<20} {row['kills']:>5} {row['killed']:>6} {row['reference_s']:>6} {row['rerun_s']:>7}  "
              f"{'yes' if row['matched'] else 'NO'}", flush=True)
        for problem in row["problems"][:10]:
            print(f"    {problem}")
    matched = sum(r["matched"] for r in rows)
    result = {"stages": len(rows), "kills": sum(r["kills"] for r in rows), "killed": sum(r["killed"] for r in rows),
              "matched": matched, "all_matched": matched == len(rows), "seed": args.seed,
              "wall_s": round(time.time() - start, 1), "work": str(work), "rows": rows}
    print(f"summary: {result['kills']} kills ({result['killed']} mid-run) over {len(rows)} stages; "
          f"{matched}/{len(rows)} reruns matched the uninterrupted run")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
