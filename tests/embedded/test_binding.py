"""The text-binding probe: it reads cells from states that carry them, stays near chance on states that do not,
and runs end to end on a model's encoder."""

from __future__ import annotations

import numpy as np
import torch

from difflens.embedded import ShapesModelConfig, ShapesPipeline
from difflens.embedded.binding import binding_report, format_binding, measure_binding, phrase_start, words
from difflens.world.caption import parse_caption
from difflens.world.scene import POSITIONS


def test_phrase_start_finds_each_objects_words():
    scene = parse_caption("a small red circle on the left and a large blue square in the center on a white background")
    caption = words(scene.caption)
    for obj in scene.objects:
        start, phrase = phrase_start(caption, obj)
        assert caption[start:start + len(phrase)] == phrase and obj.color in phrase


def test_probe_reads_cells_only_from_states_that_carry_them():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, len(POSITIONS), 400)
    counts = rng.integers(1, 4, 400)
    noise = rng.normal(size=(400, 12)).astype(np.float32)
    bound = noise.copy()
    bound[:, :9] += 4 * np.eye(9, dtype=np.float32)[cells]
    report = binding_report({"color": bound, "shape": noise}, cells, counts)
    assert report["objects"] == 400 and report["chance"] == 1 / 9
    assert report["color_word"]["all"] > 0.9
    assert report["shape_word"]["all"] < 0.35
    assert set(report["color_word"]["by_objects"]) == {1, 2, 3}
    assert "color word -> its phrase's cell" in format_binding(report)


def test_measure_binding_on_a_random_rich_encoder():
    cfg = ShapesModelConfig(**{**ShapesModelConfig.tiny().__dict__, "world": "rich", "vocab": [], "max_text_len": 36})
    pipe = ShapesPipeline.random(cfg, seed=0)
    pipe.text_encoder.train()
    report = measure_binding(pipe.text_encoder, pipe.tokenizer, "rich", captions=60, seed=1)
    assert report["objects"] >= 60 and 0 <= report["color_word"]["all"] <= 1
    assert pipe.text_encoder.training  # the encoder's mode is restored
    torch.testing.assert_close(torch.tensor(report["chance"]), torch.tensor(1 / 9))
