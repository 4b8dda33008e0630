"""The oracle-robustness measure: exact on clean renders, every damage level scored, a table per world, its command."""

from __future__ import annotations

import json

from difflens.cli import main as cli_main
from difflens.world.robustness import COLUMNS, DAMAGES, format_robustness, oracle_robustness


def test_clean_renders_read_exactly_and_damage_costs_accuracy():
    for world in ("classic", "rich"):
        results = oracle_robustness(world, n=6)
        assert list(results) == [label for label, _, _ in DAMAGES]
        assert results["clean"]["shape_acc"] == 1.0 and results["clean"]["color_acc"] == 1.0
        assert all(0 <= r["shape_acc"] <= 1 and r["ms_per_image"] >= 0 for r in results.values())
        table = format_robustness(world, results).splitlines()
        assert len(table) == 1 + len(DAMAGES) and all(c[:9] in table[0] for c in COLUMNS[world])


def test_cli_oracle_robustness(capsys):
    assert cli_main(["world", "oracle-robustness", "--n", "3", "--world", "classic"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 3 and set(out) == {"n", "classic"} and "ragged edges 30%" in out["classic"]
