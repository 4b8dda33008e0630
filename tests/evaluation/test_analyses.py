"""Analyses on inputs whose answer is known: residual norms, PCA spectrum, transfer across steps, the k/size
sweep and the across-layers comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.dictionaries import NeuronBasis
from difflens.dictionaries.train import RunConfig, SAETrainConfig
from difflens.evaluation.analyses import (across_layers, across_steps, layer_key, pca_spectrum, plot_sweep,
                                          residual_norms, sweep_k_size)
from difflens.store.sources import TensorReader
from stores import SHALLOW_SITE as SHALLOW
from stores import SITE as DEEP
from stores import TINY_SAE, make_site_store


def test_layer_key_orders_double_blocks_before_single_blocks_by_depth():
    sites = ["single.0.img.out", "double.10.img.out", "other", "double.2.txt.out", "single.11.img.out"]
    assert sorted(sites, key=layer_key) == ["double.2.txt.out", "double.10.img.out", "single.0.img.out",
                                            "single.11.img.out", "other"]


def test_residual_norms_of_rows_with_known_norms(tmp_path):
    """Every image row has norm 3 and every text row norm 4 at step 0 (step 1 doubles them); .mlp sites are not
    residual streams and stay out."""
    n = 8 * 16
    img, txt = torch.zeros(n, 6), torch.zeros(n, 4)
    img[torch.arange(n), torch.arange(n) % 6] = 3.0
    txt[torch.arange(n), torch.arange(n) % 4] = 4.0
    sites = {"double.0.img.out": img, "single.1.img.out": img * 0.5, "double.0.txt.out": txt,
             "double.0.img.mlp": img * 100}
    store = dl.open_store(make_site_store(tmp_path / "store", sites, steps=(0, 1)))
    out = residual_norms(store, max_tokens=64, out_dir=tmp_path / "plots")
    assert out["img"]["sites"] == ["double.0.img.out", "single.1.img.out"] and out["img"]["steps"] == [0, 1]
    assert np.allclose(out["img"]["mean_norm"], [[3.0, 6.0], [1.5, 3.0]])
    assert out["txt"]["sites"] == ["double.0.txt.out"] and np.allclose(out["txt"]["mean_norm"], [[4.0, 8.0]])
    for name in ("image", "text"):
        assert (tmp_path / "plots" / f"residual_norms_{name}.png").stat().st_size > 1000
    assert residual_norms(store, kind="mlp")["img"]["sites"] == ["double.0.img.mlp"]


def test_pca_spectrum_finds_the_planted_variances(tmp_path):
    """Variance 16 along one direction, 1 along another, 1e-4 in the remaining six: the top component holds 16/17."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    scales = torch.tensor([4.0, 1.0] + [0.01] * 6)
    x = (torch.randn(20_000, 8, generator=g) * scales) @ basis.T + 3.0
    out = pca_spectrum(TensorReader(x), "s", max_tokens=20_000, out_dir=tmp_path)
    assert out["top1_fraction"] == pytest.approx(16 / 17, abs=0.01)
    assert out["variances"][:2] == pytest.approx([16, 1], rel=0.05) and max(out["variances"][2:]) < 1e-3
    assert (out["components_for_50pct"], out["components_for_90pct"], out["components_for_99pct"]) == (1, 1, 2)
    assert (tmp_path / "pca_spectrum_s.png").stat().st_size > 1000


def test_a_lossless_dictionary_transfers_to_every_step_and_site(split_store, tmp_path):
    """The identity basis reconstructs exactly wherever it is applied: FVU 0 at each (site, step), one row each."""
    lossless = NeuronBasis(16)
    lossless.meta = {"site": DEEP, "step": 0, "store": {"path": str(split_store)}}
    rows = across_steps(lossless, sites=[SHALLOW, DEEP], max_tokens=256, out_dir=tmp_path)
    assert [(r["site"], r["step"]) for r in rows] == [(DEEP, 0), (DEEP, 1), (SHALLOW, 0), (SHALLOW, 1)]
    assert all(abs(r["fvu_residual"]) < 1e-6 and r["trained_step"] == 0 and r["trained_site"] == DEEP for r in rows)
    assert all(r["tokens"] == 256 and r["l0"] == pytest.approx(16, abs=0.1) for r in rows)
    for metric in ("fvu_residual", "fvu_input_space"):
        assert (tmp_path / f"steps_{metric}.png").stat().st_size > 1000
    assert [r["step"] for r in across_steps(lossless, steps=[1], max_tokens=64)] == [1]


def test_across_steps_names_what_is_missing(split_store):
    lossless = NeuronBasis(16)
    lossless.meta = {"site": DEEP, "step": 0}
    with pytest.raises(ValueError, match="store of dictionary .* is not recorded"):
        across_steps(lossless)
    with pytest.raises(ValueError, match=r"has no step\(s\) \[5\].*stored steps: \[0, 1\]"):
        across_steps(lossless, split_store, steps=[1, 5])
    with pytest.raises(ValueError, match="site 'single.0.img.out' is not in store"):
        across_steps(lossless, split_store, sites=["single.0.img.out"])


def test_sweep_trains_one_sae_per_size_and_k_and_skips_k_above_size(split_store, tmp_path):
    train = SAETrainConfig(**{k: v for k, v in TINY_SAE.items() if k in SAETrainConfig.__dataclass_fields__})
    rows = sweep_k_size(split_store, [2, 8], [4, 16], train, tmp_path, site=DEEP, step=0, eval_source=split_store,
                        eval_tokens=256, run=RunConfig(progress=False, checkpoint_every=0))
    assert [(r["num_latents"], r["k"]) for r in rows] == [(4, 2), (16, 2), (16, 8)]  # k 8 > 4 latents: skipped
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["d16_k2", "d16_k8", "d4_k2"]
    assert all(r["l0"] <= r["k"] + 1e-9 and 0 <= r["fvu_residual"] < 1 for r in rows)
    by = {(r["num_latents"], r["k"]): r["fvu_residual"] for r in rows}
    assert by[(16, 8)] < by[(16, 2)]  # more active latents, better reconstruction
    for png in ("sweep_fvu_vs_k.png", "sweep_fvu_vs_size.png", "sweep_dead_fraction.png"):
        assert (tmp_path / png).stat().st_size > 1000
    plot_sweep([], tmp_path / "empty", "s", 1)
    assert not (tmp_path / "empty").exists()


def test_across_layers_evaluates_each_dictionary_on_its_site_in_depth_order(split_store, eval_run, tmp_path):
    rows = across_layers(split_store, eval_run, 0, 256, tmp_path)
    assert [r["site"] for r in rows] == [SHALLOW, DEEP]  # depth order, not folder order (a_deep, b_shallow)
    assert all(r["split"] == "held-out" and 0 < r["fvu_residual"] < 1 and not math.isnan(r["l0"]) for r in rows)
    for metric in ("fvu_residual", "fvu_input_space", "dead_fraction"):
        assert (tmp_path / f"layers_{metric}.png").stat().st_size > 1000
