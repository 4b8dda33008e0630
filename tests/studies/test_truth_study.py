"""The ground-truth study on a tiny synthetic run: every part writes its rows and tables, and a rerun resumes."""

from __future__ import annotations

import json

from stores import SITE, make_world_store

from difflens.studies.truth_study import run_study, study_tables


def test_study_parts_tables_and_resume(tmp_path):
    run = tmp_path / "run"
    make_world_store(run / "store", split=True)
    config = {"k": 2, "expansion_factor": 1, "sae_tokens": 3_000, "itda_tokens": 2_000, "itda_threshold": 0.3,
              "model": "synthetic"}
    (run / "summary.json").write_text(json.dumps({"config": config, "site": SITE, "step": 0}))
    result = run_study(run, seeds=(0, 1), methods=("sae_pca", "itda"), random_model=False, sizes=((16, 2),))
    parts = [(r["part"], r["method"], r["seed"], r["latents"]) for r in result["rows"]]
    assert parts == [("dictionaries", "sae_pca", 0, 64), ("dictionaries", "sae_pca", 1, 64),
                     ("dictionaries", "itda", 0, parts[2][3]), ("dictionaries", "itda", 1, parts[3][3]),
                     ("sizes", "sae_pca", 0, 16)]
    for r in result["rows"]:
        assert 0 <= r["dictionary.precise_share"] <= 1 and r["random.precise_share"] is not None
    md = (run / "truth_study" / "study.md").read_text()
    assert "### dictionaries" in md and "### sizes" in md and "(seeds " in md  # two seeds: their range is shown
    assert md == study_tables(result["rows"])
    # a rerun reads every finished report back
    reports = sorted((run / "truth_study").rglob("truth.json"))
    stamps = [p.stat().st_mtime_ns for p in reports]
    again = run_study(run, seeds=(0, 1), methods=("sae_pca", "itda"), random_model=False, sizes=((16, 2),))
    assert [p.stat().st_mtime_ns for p in reports] == stamps and again["rows"] == result["rows"]
