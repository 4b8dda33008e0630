"""The site x step ground-truth scan on a tiny synthetic world store: a report per pair, tables, the command."""

from __future__ import annotations

import json

import pytest
from stores import SITE, make_world_store

from difflens.cli import main as cli_main
from difflens.interpret.scan import ScanConfig, group_means, scan_tables, truth_scan

TINY = dict(num_latents=16, k=2, tokens=3_000, sparse_sizes=[], probe_tokens=2_048)


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan") / "store"
    make_world_store(root, split=True)
    return root


def test_scan_writes_a_report_per_pair_and_a_summary(world_store, tmp_path):
    logged = []
    out = tmp_path / "scan"
    summary = truth_scan(ScanConfig(store=str(world_store), steps=[0, 5], out=str(out), **TINY), log=logged.append)
    assert any("not recorded, skipped" in m and f"{SITE}@5" in m for m in logged)
    [row] = summary["rows"]
    assert (row["site"], row["step"]) == (SITE, 0) and summary["concepts_named"][0] == "color:red"
    assert 0 <= row["explained"] <= 1 and row["alive"] > 0
    # red is what the activations carry: its best latent beats the random directions' best
    report = json.loads((out / f"{SITE}@0.json").read_text())
    assert report["coverage"]["color:red"] > report["coverage_random"]["color:red"]
    assert report["scan"]["settings"]["num_latents"] == 16 and report["scan"]["settings"]["k_aux"] == 4
    assert json.loads((out / "summary.json").read_text())["reports"] == [f"{SITE}@0.json"]
    table = scan_tables(summary)
    assert "means by site" in table and SITE in table


def test_group_means_skip_cells_that_are_not_numbers():
    rows = [{"site": "a", "x": 0.2}, {"site": "a", "x": "-"}, {"site": "b", "x": "-"}]
    assert group_means(rows, "site", ["x"]) == [{"site": "a", "pairs": 2, "x": 0.2}, {"site": "b", "pairs": 1, "x": "-"}]


def test_cli_scan_refuses_a_store_without_pairs(world_store, tmp_path, capsys):
    assert cli_main(["features", "scan", "--store", str(world_store), "--steps", "9", "--out", str(tmp_path)]) == 2
    assert "no (site, step) pair" in capsys.readouterr().err
