"""The layering of ARCHITECTURE.md is a contract the code keeps: `lint-imports` with the contracts in pyproject.toml
(layers top to bottom; nothing below the API imports `difflens` itself; no module imports a command-line module)."""

from __future__ import annotations

import re
from pathlib import Path

import difflens


def test_imports_keep_the_layers_contract(capsys):
    from importlinter.cli import lint_imports

    root = Path(__file__).resolve().parents[1]
    assert Path(difflens.__file__).resolve().is_relative_to(root / "src"), "lint the checkout under test"
    status = lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 0, report
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", report)
    assert kept and int(kept.group(1)) >= 3, report
