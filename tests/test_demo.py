"""`difflens demo`'s guard against a run folder left by another model's demo (the full demo is `make demo`)."""

from __future__ import annotations

import json

import pytest

from difflens.demo import DemoConfig, run_demo


def test_demo_refuses_a_run_folder_holding_another_models_demo_and_says_what_to_do(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "capture.json").write_text(json.dumps({"model": "embedded", "n_images": 240}))
    with pytest.raises(ValueError, match=r"holds a demo of model 'embedded', not of 'embedded-rich'.*remove .* or "
                                         r"pass --out DIR"):
        run_demo(DemoConfig(out=str(tmp_path), quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing written beside it
