"""The `difflens` command's verbs match the API's names (capture, feature index); the old spellings still work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from difflens.cli import build_parser, main


@pytest.mark.parametrize("new, old", [(["capture"], ["cache"]), (["capture", "info"], ["cache", "info"]),
                                      (["features", "index"], ["features", "build"])])
def test_old_and_new_spellings_parse_to_the_same_command(new, old):
    parser = build_parser()
    tail = ["--run", "R"] if new[0] == "features" else ["--out", "S", "--n-images", "3"] if len(new) == 1 else ["S"]
    a, b = parser.parse_args(new + tail), parser.parse_args(old + tail)
    assert a.func is b.func
    assert {k: v for k, v in vars(a).items() if k not in ("command", "features_command")} == \
        {k: v for k, v in vars(b).items() if k not in ("command", "features_command")}


def test_help_names_the_new_verbs_and_the_old_as_aliases(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    top = capsys.readouterr().out
    assert "capture (cache)" in top
    with pytest.raises(SystemExit):
        build_parser().parse_args(["features", "--help"])
    assert "index (build)" in capsys.readouterr().out


def test_both_spellings_run(site_store, tmp_path, capsys):
    """`capture info` and `cache info` print the same description; `features index` and `features build` write the
    same index."""
    assert main(["capture", "info", str(site_store)]) == 0
    new = capsys.readouterr().out
    assert main(["cache", "info", str(site_store)]) == 0
    assert capsys.readouterr().out == new and "double.1.img.out" in new
    run = tmp_path / "run"
    assert main(["train", "--store", str(site_store), "--out", str(run), "--num-latents", "32", "--k", "2",
                 "--tokens", "512", "--batch-size", "128", "--quiet"]) == 0
    [folder] = [p for p in run.iterdir() if (p / "cfg.json").exists()]
    for verb, out in (("index", tmp_path / "i1"), ("build", tmp_path / "i2")):
        assert main(["features", verb, "--run", str(folder), "--out", str(out), "--quiet"]) == 0
    written = [json.loads((tmp_path / i / "index.json").read_text()) for i in ("i1", "i2")]
    for w in written:
        w.pop("seconds")
    assert written[0] == written[1] and written[0]["complete"]
    tensors = [load_file(tmp_path / i / "index.safetensors") for i in ("i1", "i2")]
    assert tensors[0].keys() == tensors[1].keys() and all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
