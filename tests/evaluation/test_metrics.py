"""Evaluation: the one FVU definition, streamed metrics, analyses CLI (JSON + PNG plots)."""

import json

import torch

from difflens.dictionaries import NeuronBasis, SAEConfig, TopKSAE
from difflens.cli import main as dict_main
from difflens.store.sources import TensorReader
from difflens.evaluation import MetricAccumulator, evaluate, fvu


def test_fvu_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g) + 10
    assert abs(fvu(x, x)) < 1e-12
    assert abs(fvu(x, x.mean(0).expand_as(x)) - 1.0) < 1e-9  # predicting the mean explains nothing
    noise = torch.randn(100, 5, generator=g)
    expected = float(noise.double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
    assert abs(fvu(x, x + noise) - expected) < 1e-6  # x + noise is rounded to float32


def test_streamed_accumulator_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 7, generator=g) * 3 + 2
    r = x + 0.3 * torch.randn(1000, 7, generator=g)
    acc = MetricAccumulator(7, 0)
    for a, b in zip(x.split(128), r.split(128)):
        acc.update(a, b)
    res = acc.result()
    assert abs(res["fvu"] - fvu(x, r)) < 1e-9 and abs(res["variance_explained"] - (1 - fvu(x, r))) < 1e-9


def test_evaluate_l0_dead_and_kinds():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 8, generator=g).relu()
    reader = TensorReader(x)
    nb = evaluate(NeuronBasis(8, k=2), reader, max_tokens=300, batch_size=100)
    assert nb["tokens"] == 300 and nb["l0"] <= 2 and nb["kind"] == "neurons"
    sae = TopKSAE(8, SAEConfig(num_latents=32, k=3, normalization="none"))
    with torch.no_grad():
        sae.W_enc[5:] = 0
        sae.b_enc[5:] = -1  # latents 5.. can never fire
    res = evaluate(sae, reader, max_tokens=512)
    assert res["dead_fraction"] >= 27 / 32 and res["l0"] <= 3
    assert abs(res["fvu_residual"] - res["fvu_input_space"]) < 1e-6  # no normalisation: same space
    assert res["input_space"] == res["loss_space"] == "residual"


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
