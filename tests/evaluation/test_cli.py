"""`difflens eval` and `difflens analyze`: where results go, what they hold, and the errors a user can make."""

from __future__ import annotations

import json
import re

import pytest
import torch

from difflens.cli import main as dict_main
from stores import SHALLOW_SITE, SITE, make_site_store, synthetic_acts


def test_eval_of_a_run_folder_writes_metrics_beside_it_and_says_which_split(eval_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("a_deep", "b_shallow"):
        (run / name).symlink_to(eval_run / name)
    assert dict_main(["eval", "--run", str(run), "--tokens", "256"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((run / "metrics.json").read_text())["results"]
    assert [(r["name"], r["site"], r["split"], r["in_sample"]) for r in rows] == [
        ("a_deep", SITE, "held-out", False), ("b_shallow", SHALLOW_SITE, "held-out", False)]
    assert all(r["tokens"] == 256 and 0 < r["fvu_residual"] < 1 and r["l0"] <= 4 for r in rows)
    assert printed.splitlines()[0].split()[:4] == ["name", "site", "step", "split"]
    assert "split: held-out\n" in printed and "in-sample" not in printed and f"wrote {run / 'metrics.json'}" in printed
    # one dictionary folder, all rows of its store: the metrics go beside the folder and say they are in-sample
    assert dict_main(["eval", "--run", str(run / "a_deep"), "--split", "all", "--tokens", "256"]) == 0
    assert "split: all  (in-sample: these rows include training rows)" in capsys.readouterr().out
    [row] = json.loads((run / "metrics.json").read_text())["results"]
    assert (row["name"], row["split"], row["in_sample"]) == ("a_deep", "all", True)


def test_eval_across_steps_writes_one_row_per_step_and_site(eval_run, tmp_path):
    out = tmp_path / "m" / "metrics.json"
    assert dict_main(["eval", "--run", str(eval_run / "a_deep"), "--steps", "all", "--sites", SHALLOW_SITE,
                      "--tokens", "128", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["site"], r["step"]) for r in rows] == [(SITE, 0), (SITE, 1), (SHALLOW_SITE, 0), (SHALLOW_SITE, 1)]
    assert all(r["trained_step"] == 0 for r in rows)
    assert (tmp_path / "m" / "steps_a_deep" / "steps_fvu_residual.png").stat().st_size > 1000


def test_eval_and_analyze_errors_are_one_line_and_exit_2(eval_run, split_store, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    narrow = make_site_store(tmp_path / "narrow", {SITE: synthetic_acts(8, 8, 3)})
    bad = {
        ("eval", "--run", str(tmp_path / "missing")): "does not exist",
        ("eval", "--run", str(empty)): "no dictionaries",
        ("eval", "--run", str(eval_run / "a_deep"), "--store", str(narrow)): "width 8 but the dictionary expects width 16",
        ("eval", "--run", str(eval_run / "a_deep"), "--steps", "0,9"): r"no step\(s\) \[9\]",
        ("analyze", "--store", str(split_store), "--out", str(tmp_path / "a"), "--what", "norms,spectra"):
            r"unknown analyses \['spectra'\]",
        ("analyze", "--store", str(split_store), "--out", str(tmp_path / "a"), "--what", "pca"): "--site is required",
        ("analyze", "--store", str(split_store), "--out", str(tmp_path / "a"), "--what", "layers"): "--run is required",
    }
    for argv, message in bad.items():
        assert dict_main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"difflens {argv[0]}: error: ") and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), (argv, err)
    assert not (empty / "metrics.json").exists()


def test_analyze_cli_writes_json_and_plots(tmp_path):
    from stores import make_site_store, synthetic_acts

    sites = {f"double.{i}.img.out": synthetic_acts(32, 8, i) * (i + 1) for i in range(2)}
    sites["double.0.txt.out"] = synthetic_acts(32, 8, 9)
    store = make_site_store(tmp_path / "store", sites, steps=(0, 1))
    out = tmp_path / "analysis"
    rc = dict_main(["analyze", "--store", str(store), "--out", str(out), "--what", "norms,pca,sweep",
                    "--site", "double.1.img.out", "--step", "0", "--ks", "2,4", "--sizes", "16,32",
                    "--tokens", "512", "--batch-size", "128"])
    assert rc == 0
    report = json.loads((out / "analysis.json").read_text())
    img = report["residual_norms"]["img"]
    assert img["sites"] == ["double.0.img.out", "double.1.img.out"] and img["steps"] == [0, 1]
    norms = torch.tensor(img["mean_norm"])
    assert (norms[1] > norms[0]).all() and (norms[:, 1] > norms[:, 0]).all()  # scaled by layer and step
    assert "txt" in report["residual_norms"]
    assert report["pca_spectrum"]["top1_fraction"] > 0.5
    assert len(report["sweep"]) == 4
    for png in ("residual_norms_image.png", "residual_norms_text.png", "pca_spectrum_double.1.img.out.png",
                "sweep_fvu_vs_k.png", "sweep_fvu_vs_size.png", "sweep_dead_fraction.png"):
        assert (out / png).stat().st_size > 1000, png
    # across layers: one dictionary per site in a run folder
    run = tmp_path / "run"
    for site in ("double.0.img.out", "double.1.img.out"):
        assert dict_main(["train", "--store", str(store), "--site", site, "--step", "0", "--out", str(run), "--num-latents", "16",
                          "--k", "2", "--tokens", "256", "--batch-size", "128", "--quiet"]) == 0
    assert dict_main(["analyze", "--store", str(store), "--out", str(out / "layers"), "--what", "layers", "--run", str(run),
                      "--step", "0"]) == 0
    rows = json.loads((out / "layers" / "analysis.json").read_text())["layers"]
    assert [r["site"] for r in rows] == ["double.0.img.out", "double.1.img.out"]
    assert (out / "layers" / "layers_fvu_residual.png").exists() and (out / "layers" / "layers_fvu_input_space.png").exists()


def test_a_dictionary_across_steps_is_evaluated_per_step_and_compared_with_one_step_ones(split_store, eval_run, tmp_path,
                                                                                           capsys):
    import difflens as dl
    from stores import TINY_SAE

    settings = {k: v for k, v in TINY_SAE.items() if k not in ("checkpoint_every", "progress")}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    assert dict_main(["train", "--store", str(split_store), "--site", SITE, "--step", "all", "--out",
                      str(tmp_path / "span"), "--step-normalization", "per-step", "--quiet", *flags]) == 0
    one = tmp_path / "one"
    one.mkdir()
    (one / "s0").symlink_to(eval_run / "a_deep")
    (one / "other_site").symlink_to(eval_run / "b_shallow")
    dl.train_sae(split_store, SITE, 1, out=one / "s1", **TINY_SAE)
    capsys.readouterr()
    assert dict_main(["eval", "--run", str(tmp_path / "span"), "--steps", "all", "--tokens", "256",
                      "--compare-per-step", str(one)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "span" / "metrics.json").read_text())["results"]
    assert [(r["step"], r["trained_steps"], r["split"]) for r in rows] == [(0, [0, 1], "held-out"), (1, [0, 1], "held-out")]
    assert all(0 < r["fvu_residual"] < 1 for r in rows)
    compared = json.loads((tmp_path / "span" / "compare.json").read_text())["results"]
    assert [c["step"] for c in compared] == [0, 1] and all(c["num_latents"] == 32 for c in compared)
    for c, r in zip(compared, rows):
        assert c["fvu_residual_spanning"] == r["fvu_residual"] and 0 < c["fvu_residual_per_step"] < 1
        assert c["l0_spanning"] <= 4 and c["l0_per_step"] <= 4
    assert "fvu_residual_per_step" in printed and "compare.json" in printed
    # unequal width is refused, not compared
    wide = dl.train_sae(split_store, SITE, 0, **{**TINY_SAE, "num_latents": 48})
    with pytest.raises(ValueError, match="equal width"):
        dl.compare_per_step(dl.load_dictionary(tmp_path / "span" / SITE), [wide], split_store)
