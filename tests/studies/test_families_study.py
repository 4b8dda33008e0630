"""The SAE-family study on a tiny synthetic run: a row per family with every field, the steps table (one
dictionary across steps beside one per step, at each step), and a rerun (from the CLI) that retrains nothing."""

from __future__ import annotations

import json

from stores import SITE, make_world_store

from difflens.cli import main as cli_main
from difflens.studies.families_study import FAMILIES, FamiliesConfig, families_tables, run_families_study

FIELDS = ("fvu_residual", "fvu_input_space", "l0", "dead_fraction", "train_seconds", "dictionary.precise_share",
          "dictionary.precise_share.interval", "random.precise_share", "init.precise_share",
          "dictionary.precise_share_coarse", "dictionary.ap_share", "dictionary.f1_share", "dictionary.mean_union_f1",
          "dictionary.mean_absorption", "precise_latents_per_concept", "split_concepts_share", "command")


def test_families_rows_steps_table_and_resume(tmp_path):
    run = tmp_path / "run"
    make_world_store(run / "store", split=True, steps=(0, 1))
    config = {"k": 2, "expansion_factor": 1, "sae_tokens": 8_192, "model": "synthetic"}
    (run / "summary.json").write_text(json.dumps({"config": config, "site": SITE, "step": 0}))
    cfg = FamiliesConfig(run=str(run), seeds=[0], steps=[0, 1], step_normalizations=["shared", "per-step"],
                         eval_tokens=2_000)
    result = run_families_study(cfg, log=lambda m: None)
    rows = result["rows"]
    fam = {r["family"]: r for r in rows if r["part"] == "families"}
    assert list(fam) == list(FAMILIES)
    for family, r in fam.items():
        missing = [f for f in FIELDS if f not in r]
        assert not missing, (family, missing)
        assert (r["space"], r["latents"], r["k"], r["step"]) == ("whitened", 64, 2, 0)
        assert 0 <= r["dictionary.precise_share"] <= 1 and 0 < r["fvu_residual"] and r["l0"] > 0
        assert r["train_seconds"] > 0 and f"--families {family}" in r["command"]
    assert [p["latents"] for p in fam["matryoshka"]["prefixes"]] == [4, 16, 64]
    assert all(0 <= (p["precise_share"] or 0) <= 1 for p in fam["matryoshka"]["prefixes"])
    assert "prefixes" not in fam["topk"]
    steps = [(r["dictionary"], r["normalization"], r["step"]) for r in rows if r["part"] == "steps"]
    assert steps == [("one step", "-", 0), ("one step", "-", 1), ("across steps", "shared", 0),
                     ("across steps", "shared", 1), ("across steps", "per-step", 0), ("across steps", "per-step", 1)]
    for r in rows[len(fam):]:
        assert r["latents"] == 64 and r["dictionary.precise_share"] is not None and r["fvu_input_space"] > 0
    # the one-step SAE at the demo's step is the families part's TopK SAE, not a second training
    assert rows[len(fam)]["fvu_residual"] == fam["topk"]["fvu_residual"]
    out = run / "families_study"
    md = (out / "families.md").read_text()
    assert md == families_tables(rows) and "### families" in md and "### steps" in md
    assert md.count("| whitened |") == 4 and md.count("| across steps |") == 4 and "`difflens study families" in md
    saved = json.loads((out / "families.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    # a rerun from the CLI reloads every dictionary and reads every evaluation and report back
    done = sorted(p for p in out.rglob("*") if p.suffix in (".safetensors", ".json") and p.parent != out)
    stamps = [p.stat().st_mtime_ns for p in done]
    assert cli_main(["study", "families", "--run", str(run), "--seeds", "0", "--steps", "0,1",
                     "--eval-tokens", "2000"]) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert json.loads((out / "families.json").read_text())["rows"] == saved["rows"]
