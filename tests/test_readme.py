"""The README's notebook section runs top to bottom, as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Python API"


def notebook_code() -> str:
    """The ```python blocks of the README's Python API section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)
    assert blocks, "the README's Python API section holds no python blocks"
    return "\n".join(blocks)


def test_readme_notebook_runs(tmp_path, capsys):
    code = notebook_code()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    sae = namespace["sae"]
    assert sae.site == "double.1.img.out" and sae.step == 3 and sae.store["path"].startswith(str(tmp_path))
    assert namespace["codes"].values.shape[:2] == (16, 256)
    assert "held-out" in capsys.readouterr().out
    result = namespace["result"]  # steering: two strengths, the baseline and the oracle's readings
    assert len(result.images) == 2 and result.images[0].shape == result.baseline.shape
    assert [r[0]["tokens"] for r in result.records] == [64, 64]
