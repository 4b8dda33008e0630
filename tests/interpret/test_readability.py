"""Card readability: the hottest token's colour is read from the pixels, blue paint hides it and marks firing
tokens; on a tiny run with a red latent's index, the command measures every style."""

from __future__ import annotations

import json

import numpy as np
import torch
from stores import SITE, make_world_store

import difflens as dl
from difflens.cli import main as cli_main
from difflens.dictionaries.io import save_dictionary
from difflens.interpret.heatmap import draw_activation
from difflens.interpret.readability import colour_latents, hottest_token_colour, marked_share, palette


def test_hottest_token_colour_and_marks_on_a_drawn_image():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[:4, :4] = (220, 40, 40)
    amap = np.zeros((16, 16), np.float32)
    amap[0, 0] = 2.0
    names, rgb = palette()
    assert hottest_token_colour(image, amap, names, rgb) == "red"
    blue = draw_activation(image, amap, 2.0, "blue")
    assert hottest_token_colour(blue, amap, names, rgb) != "red"  # the paint hides the colour
    assert marked_share(blue, image, amap, 2.0, "blue") == (1, 1)
    assert colour_latents({"latents": [{"latent": 3, "concept": "color:red", "f1": 0.6},
                                       {"latent": 4, "concept": "bg:white&shape:circle", "f1": 0.9},
                                       {"latent": 5, "concept": "bg:black", "f1": 0.2}]}, 0.5) == [(3, "red")]


def test_cli_readability_on_a_tiny_run(tmp_path, capsys):
    store = make_world_store(tmp_path / "store")  # dim 0 is 4 on red tokens
    folder = tmp_path / "run" / "dictionaries" / "sae"
    sae = dl.train_sae(store, SITE, 0, out=folder, k=2, num_latents=16, num_tokens=3_000, batch_size=256,
                       normalization="none", progress=False, checkpoint_every=0)
    with torch.no_grad():  # latent 0 reads dim 0: a red latent
        sae.W_enc[0] = 0
        sae.W_enc[0, 0], sae.b_enc[0] = 10.0, -20.0
    save_dictionary(sae, folder)
    truth = {"latents": [{"latent": 0, "concept": "color:red", "f1": 0.9},
                         {"latent": 1, "concept": "part:background", "f1": 0.9}]}
    (folder / "truth.json").write_text(json.dumps(truth))
    dl.feature_index(sae, store, out=folder / "index", top_n=4, samples=4, quantile_bins=2, batch_images=8)
    assert cli_main(["features", "readability", "--run", str(folder.parent), "--images", "3"]) == 0
    [row] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["dictionary"] == "sae" and row["colour_latents"] == 1 and row["card_images"] == 3
    assert row["shows_colour_plain"] == 1 and row["shows_colour_blue"] < 1
    assert all(0 <= row[k] <= 1 for k in row if k.startswith(("shows_", "marked_")) and row[k] is not None)
