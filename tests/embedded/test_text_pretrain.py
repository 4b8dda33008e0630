"""Step 1 of the rich recipe on a tiny encoder: targets from the scene, a saved encoder that loads, the probe's
result, and the CLI command."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file

from difflens.cli import main as cli_main
from difflens.embedded.text_encoder import TextEncoder
from difflens.embedded.text_pretrain import (BACKGROUND, IGNORE, OTHER, TextPretrainConfig, pretrain_text_encoder,
                                             word_cells)
from difflens.world.caption import parse_caption
from difflens.world.scene import POSITIONS

TINY = dict(steps=3, batch=8, layers=1, width=8, eval_captions=40)


def test_word_cells_tags_objects_background_and_the_rest():
    scene = parse_caption("a large red circle in the center on a white dotted background")
    cells = word_cells(scene, 16)
    center = POSITIONS.index("center")
    # a large red circle in the center | on a | white dotted background | padding
    assert cells.tolist() == [OTHER] + [center] * 6 + [OTHER] * 2 + [BACKGROUND] * 3 + [IGNORE] * 4


def test_pretrain_saves_an_encoder_and_reports_binding(tmp_path):
    out = tmp_path / "encoder.safetensors"
    encoder, result = pretrain_text_encoder(TextPretrainConfig(**TINY, save=str(out)), log=lambda m: None)
    assert not encoder.training
    state = load_file(out)
    assert state["token_embedding.weight"].shape[1] == 8
    fresh = TextEncoder(*state["token_embedding.weight"].shape[:1], state["position_embedding"].shape[0], 8, 1, 4)
    fresh.load_state_dict(state)  # the file is a whole encoder of these shapes
    assert result["layers"] == 1 and result["width"] == 8 and result["steps"] == 3
    assert -1 <= result["background_word_cosine"] <= 1
    assert set(result["color_word"]) == {"all", "by_objects"} and result["objects"] >= 40
    # same seed, same encoder
    again, _ = pretrain_text_encoder(TextPretrainConfig(**TINY), log=lambda m: None)
    for (k, a), b in zip(encoder.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_cli_pretrain_text(tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli_main(["world", "pretrain-text", *args, "--identity-weight", "0", "--save", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["identity_weight"] == 0 and out.exists()
    assert any(line.startswith("step 2: parsing loss") for line in lines)
    assert np.isfinite(result["color_word"]["all"])
