"""The editing benchmark one category group at a time, merged into one results.json (`bench edits --groups`).

Each group is one `run_edit_bench` call writing ``<group>.json`` beside the results file (a group already written
is skipped, so an interrupted run resumes by group); `merge_results` then joins them into the results file, its
table and curves. Long runs on a CPU stay short pieces this way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...locks import output_lock


def group_file(out: str | Path, group: list[str]) -> Path:
    """Where a group's results go: ``<folder of out>/<categories joined by _>.json``."""
    return Path(out).parent / f"{'_'.join(group)}.json"


def run_by_groups(config, groups: list[list[str]], merge_only: bool = False, model=None) -> dict:
    """Run (or resume) `config` (a `BenchConfig`) for each category group, then merge the group files into
    `config.out`; returns the merged results. `merge_only`: merge the group files already written."""
    from .run import learned_scorers, merge_results, run_edit_bench

    if not config.out:
        raise ValueError("--groups needs --out: the group files go beside the merged results file")
    files, learned = [], None
    for group in groups:
        path = group_file(config.out, group)
        files.append(path)
        if not (path.exists() or merge_only):
            if model is None:  # loaded once for every group that runs, as the learned scorers
                from difflens.adapters import load_adapter

                model = load_adapter(config.model)
            learned = learned_scorers(config) if learned is None else learned
            run_edit_bench(replace(config, categories=list(group), out=str(path)), model=model, learned=learned)
        elif path.exists():
            with output_lock(path):  # a writer killed after its commit point left its lock: take it over, remove it
                pass
    found = [f for f in files if f.exists()]
    if not found:
        raise FileNotFoundError(f"no group results beside {config.out} (expected {', '.join(map(str, files))})")
    return merge_results(found, config.out)
