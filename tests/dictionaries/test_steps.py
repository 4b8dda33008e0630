"""Dictionaries across denoising steps: balanced batches, shared vs per-step normalisation, files, resume checks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import difflens as dl
from difflens.dictionaries.normalization import StepNormalizers
from difflens.dictionaries.train.data import resolve_data
from difflens.evaluation.metrics import evaluate
from stores import SITE, make_site_store, synthetic_acts

SMALL = dict(num_latents=32, k=4, batch_size=128, num_tokens=128 * 60, k_aux=8, dead_window_tokens=512,
             warmup_steps=2, normalization="standardise", checkpoint_every=0)


@pytest.fixture(scope="module")
def far_steps(tmp_path_factory):
    """64 images x 16 tokens of one site at steps 0 and 9: step 9's rows are step 0's times 10."""
    return make_site_store(tmp_path_factory.mktemp("steps"), {SITE: synthetic_acts(64, 16, 0)}, steps=(0, 9))


def test_batches_hold_each_step_equally_and_ids_name_rows_and_steps(tmp_path):
    store = make_site_store(tmp_path / "s", {SITE: synthetic_acts(16, 8, 0)}, steps=(0, 2, 5))
    data = resolve_data(store, SITE, "all")
    reader = data.reader
    assert data.steps == [0, 2, 5] and data.step is None and reader.num_rows == 3 * 256
    assert data.origin()["denoising_steps"] == [0, 2, 5]
    seen = []
    for acts, rows in reader.iter_batches(31, shuffle=True, seed=1, drop_last=True):
        steps = reader.steps_of(rows)
        assert Counter(steps.tolist()) == {0: 11, 2: 10, 5: 10}  # 31 = 11 + 10 + 10
        assert (torch.as_tensor(reader.trace(rows)["step"]) == steps).all()
        assert torch.equal(reader.read_rows(rows), acts)
        seen += rows.tolist()
    assert len(seen) == len(set(seen)) and len(seen) == 23 * 31  # the smallest quota's step runs out after 23
    # rows of step 5 are step 0's scaled by 6 (tests/stores.py): the ids say which row is which
    base = resolve_data(store, SITE, 0).reader.read_rows([7])
    assert torch.allclose(reader.read_rows([7 * 3 + 2]), 6 * base, rtol=1e-2)
    assert resolve_data(store, SITE, [2]).step == 2 and resolve_data(store, SITE, [2]).steps is None
    with pytest.raises(ValueError, match="no step 4"):
        resolve_data(store, SITE, [0, 4])
    with pytest.raises(ValueError, match="needs a store"):
        resolve_data(torch.randn(64, 8), SITE, [0, 2])


def test_per_step_normalisation_reads_every_step_alike_where_a_shared_one_fails_the_quiet_step(far_steps):
    shared = dl.train_sae(far_steps, SITE, "all", **SMALL)
    per_step = dl.train_sae(far_steps, SITE, [0, 9], step_normalization="per-step", **SMALL)
    assert isinstance(per_step.normalizer, StepNormalizers) and not isinstance(shared.normalizer, StepNormalizers)
    scales = {t: per_step.normalizer.for_step(t).scale for t in (0, 9)}
    assert torch.allclose(scales[9], 10 * scales[0], rtol=0.02)
    fvu = {name: {t: evaluate(d, far_steps, step=t)["fvu_residual"] for t in (0, 9)}
           for name, d in (("shared", shared), ("per-step", per_step))}
    # the shared normaliser is fitted mostly by step 9's large rows: step 0 is reconstructed far worse
    assert fvu["shared"][0] > 3 * fvu["shared"][9] and fvu["shared"][0] > 3 * fvu["per-step"][0]
    # per step, the normalised rows of both steps are the same rows: one dictionary serves both equally
    assert abs(fvu["per-step"][0] - fvu["per-step"][9]) < 0.1 * fvu["per-step"][9]
    pooled = evaluate(per_step, far_steps)
    assert pooled["steps"] == [0, 9] and pooled["step"] is None and pooled["fvu_residual"] < 2 * fvu["per-step"][0]
    x = resolve_data(far_steps, SITE, 0).reader.read_rows(range(8))
    assert torch.allclose(per_step.encode(x, step=0).values, per_step.encode(10 * x, step=9).values, rtol=1e-2,
                          atol=1e-3)
    shared.encode(x)  # one normaliser: no step needed
    with pytest.raises(ValueError, match=r"steps \[0, 9\].*pass step="):
        per_step.encode(x)
    with pytest.raises(ValueError, match="step 3 is not one of them"):
        per_step.reconstruct(x, step=3)


def test_per_step_normalisers_round_trip_and_resume_refuses_other_steps(far_steps, tmp_path):
    sae = dl.train_sae(far_steps, SITE, "all", out=tmp_path / "d", step_normalization="per-step", **SMALL)
    loaded = dl.load_dictionary(tmp_path / "d")
    assert loaded.steps == [0, 9] and loaded.meta["denoising_steps"] == [0, 9] and loaded.step is None
    assert isinstance(loaded.normalizer, StepNormalizers) and loaded.normalizer.steps == [0, 9]
    x = resolve_data(far_steps, SITE, 9).reader.read_rows(range(16))
    for t in (0, 9):
        for key in ("mean", "scale", "variances"):
            assert torch.equal(getattr(loaded.normalizer.for_step(t), key), getattr(sae.normalizer.for_step(t), key))
        assert torch.allclose(loaded.reconstruct(x, step=t)[0], sae.reconstruct(x, step=t)[0])
    assert torch.allclose(loaded.feature_directions([1], step=9), sae.feature_directions([1], step=9))
    # the same job is reused; other steps or another step normalisation are refused, the difference named
    assert dl.train_sae(far_steps, SITE, [0, 9], out=tmp_path / "d", step_normalization="per-step", **SMALL).steps == [0, 9]
    with pytest.raises(ValueError, match=r"data.step: finished None, now 0.*data.steps: finished \[0, 9\], now None"):
        dl.train_sae(far_steps, SITE, 0, out=tmp_path / "d", step_normalization="per-step", **SMALL)
    with pytest.raises(ValueError, match="step_normalization: finished 'per-step', now 'shared'"):
        dl.train_sae(far_steps, SITE, "all", out=tmp_path / "d", **SMALL)
    # a checkpoint of a step-spanning job is bound to its steps too
    dl.train_sae(far_steps, SITE, "all", out=tmp_path / "c", **{**SMALL, "checkpoint_every": 5},
                 on_step=lambda step, *_: step == 6)
    with pytest.raises(ValueError, match="checkpoint.*step_normalization"):
        dl.train_sae(far_steps, SITE, "all", out=tmp_path / "c", step_normalization="per-step",
                     **{**SMALL, "checkpoint_every": 5})
