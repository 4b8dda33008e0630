"""`difflens world quality --objects`: one JSON line per object count, in the prompts' world."""

from __future__ import annotations

import json

from difflens.cli import main as cli_main
from difflens.embedded import ShapesModelConfig, ShapesPipeline


def test_quality_by_object_count(tmp_path, capsys):
    cfg = ShapesModelConfig(**{**ShapesModelConfig.tiny().__dict__, "image_size": 64, "world": "rich", "vocab": [],
                               "max_text_len": 36})
    ShapesPipeline.random(cfg, seed=0).save_pretrained(tmp_path / "model")
    assert cli_main(["world", "quality", "--weights", str(tmp_path / "model"), "--n", "2", "--steps", "1",
                     "--objects", "1,3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["objects"], r["world"], r["n"]) for r in lines] == [(1, "rich", 2), (3, "rich", 2)]
    assert "bound_acc" in lines[1] and 0 <= lines[1]["count_acc"] <= 1
