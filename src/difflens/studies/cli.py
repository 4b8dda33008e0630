"""`difflens study truth|families|scan|extra-concepts`: the ground-truth studies the docs quote, flags from their configs."""

from __future__ import annotations

import json
from pathlib import Path

from difflens.configs import add_command, config_from_args


def register(subparsers) -> None:
    from .extra_concepts import ExtraConceptsConfig
    from .families_study import FamiliesConfig
    from .truth_scan import ScanConfig
    from .truth_study import StudyConfig

    s = subparsers.add_parser("study", help="ground-truth studies: dictionaries x seeds x steps x sizes, SAE families, "
                                            "a site x step scan, extra concept families")
    ssub = s.add_subparsers(dest="study_command", required=True, metavar="STUDY")
    add_command(ssub, "truth", "the ground-truth study of a demo run: dictionaries over seeds, the random-model control "
                "across sites and steps, sizes (writes study.json and study.md)", cmd_truth, StudyConfig)
    add_command(ssub, "families", "SAE families (TopK, BatchTopK, Matryoshka, JumpReLU) at equal width and k, and one "
                "dictionary across steps vs one per step, on a demo run's ground truth (writes families.json and "
                "families.md)", cmd_families, FamiliesConfig)
    add_command(ssub, "scan", "ground truth of one small SAE per (site, step) of a store: where the concepts live",
                cmd_scan, ScanConfig)
    add_command(ssub, "extra-concepts", "one SAE's ground truth with extra candidate concept families (tone, edge, "
                "bgpos) appended to the labels", cmd_extra_concepts, ExtraConceptsConfig)


def cmd_truth(args) -> int:
    from .truth_study import StudyConfig, study_from_config

    print(study_from_config(config_from_args(StudyConfig, args))["table"])
    return 0


def cmd_families(args) -> int:
    from .families_study import FamiliesConfig, run_families_study

    print(run_families_study(config_from_args(FamiliesConfig, args))["table"])
    return 0


def cmd_scan(args) -> int:
    from .truth_scan import SUMMARY_FILE, ScanConfig, scan_tables, truth_scan

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
