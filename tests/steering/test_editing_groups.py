"""`bench edits --groups`: one results file per category group beside --out, merged into --out; a rerun resumes
from the group files instead of generating again."""

from __future__ import annotations

import json

import pytest
from tiny_models import adapter

from difflens.cli import main as cli_main
from difflens.dictionaries import SAEConfig, TopKSAE, save_dictionary
from difflens.steering.editing import pairs as P


def test_groups_run_once_then_merge(tmp_path, capsys, monkeypatch):
    site = "double.0.img.out"
    sae = TopKSAE(adapter("embedded-tiny").site(site).dim, SAEConfig(num_latents=64, k=4, normalization="none"), seed=0)
    sae.meta.update(site=site, step=1)
    save_dictionary(sae, tmp_path / "run" / "dictionaries" / "sae_none")
    pairs = P.write_pairs(P.make_pairs(1, categories=("size", "color")), tmp_path / "pairs.jsonl")
    out = tmp_path / "bench" / "results.json"
    args = ["bench", "edits", "--run", str(tmp_path / "run"), "--model", "embedded-tiny", "--pairs", str(pairs),
            "--n", "1", "--num-steps", "2", "--ks", "2", "--strengths", "1", "--dense-strengths", "1",
            "--no-require-faithful", "--n-boot", "10", "--quiet", "-o", str(out), "--groups", "size,color"]
    import difflens.adapters
    import difflens.steering.editing.run as run

    loads = {"model": 0, "scorers": 0}

    def counting(key, load):
        def wrapped(*a, **k):
            loads[key] += 1
            return load(*a, **k)
        return wrapped

    monkeypatch.setattr(difflens.adapters, "load_adapter", counting("model", difflens.adapters.load_adapter))
    monkeypatch.setattr(run, "load_learned_scorers", counting("scorers", run.load_learned_scorers))
    assert cli_main(args) == 0, capsys.readouterr().err
    assert loads == {"model": 1, "scorers": 1}  # once for both groups
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.glob("*.json")) == ["color.json", "results.json", "size.json"]
    merged = json.loads(out.read_text())
    assert {r["category"] for r in merged["rows"]} == {"size", "color"}
    assert "pairs kept/tried per category" in capsys.readouterr().out

    monkeypatch.setattr(run, "run_edit_bench", lambda *a, **k: pytest.fail("a written group ran again"))
    out.unlink()
    assert cli_main(args) == 0 and json.loads(out.read_text())["rows"] == merged["rows"]  # resumed by group
    (out.parent / "color.json").unlink()
    assert cli_main([*args, "--merge-only"]) == 0  # merges what is there, runs nothing
    assert {r["category"] for r in json.loads(out.read_text())["rows"]} == {"size"}
    assert cli_main(args[:-2] + ["--merge-only"]) == 2
    assert "--merge-only needs --groups" in capsys.readouterr().err
    monkeypatch.undo()  # a group rerun that talks (no --quiet) still merges with a quiet one: not a setting
    assert cli_main([a for a in args if a != "--quiet"]) == 0, capsys.readouterr().err
    assert {r["category"] for r in json.loads(out.read_text())["rows"]} == {"size", "color"}
