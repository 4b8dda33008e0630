"""The samples grid of a rich model: 16 images scored by the oracle, written as one PNG (random tiny model)."""

from __future__ import annotations

import json

from PIL import Image

from difflens.cli import main as cli_main
from difflens.embedded import ShapesModelConfig, ShapesPipeline
from difflens.embedded.samples import FIXED, sample_grid


def rich_tiny(tmp_path):
    """A random rich-world model of 64 px images (the oracle's size), saved as a model folder."""
    cfg = ShapesModelConfig(**{**ShapesModelConfig.tiny().__dict__, "image_size": 64, "world": "rich", "vocab": [],
                               "max_text_len": 36})
    pipe = ShapesPipeline.random(cfg, seed=0)
    pipe.save_pretrained(tmp_path / "model")
    return pipe


def test_sample_grid_and_cli(tmp_path, capsys):
    pipe = rich_tiny(tmp_path)
    rows = sample_grid(pipe, tmp_path / "grid.png", num_steps=1)
    assert len(rows) == 16 and [r["caption"] for r in rows[:4]] == FIXED
    assert all(0 <= r["bound_acc"] <= 1 and r["count_acc"] in (0.0, 1.0) for r in rows)
    assert Image.open(tmp_path / "grid.png").size[0] > 500
    out = tmp_path / "cli.png"
    assert cli_main(["world", "samples", "--weights", str(tmp_path / "model"), "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert out.exists() and len(json.loads(printed[-2])["images"]) == 16
