"""bench/ holds timing benchmarks only: each a script with a `main()` run under `__main__`, printing its JSON last,
importing difflens as installed (no sys.path edits). Checked on the source, nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_bench_holds_scripts():
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_has_main_and_no_sys_path(script):
    source = script.read_text()
    tree = ast.parse(source)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), "no top-level main()"
    assert 'if __name__ == "__main__":' in source
    assert "sys.path" not in source
    assert "json.dumps" in source  # the last printed line is JSON
