"""Autointerp on a planted concept: rendered shapes-world images, a 'dictionary' whose latent 0 fires exactly on
red object tokens; the oracle explainer must name it, the test sets must be disjoint and the negatives silent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.dictionaries import NeuronBasis
from difflens.interpret.autointerp import AutointerpConfig, example_sets, run_autointerp
from difflens.store import ChunkRows, EntrySpec, StoreWriter
from difflens.world import render, sample_scenes

SITE, GRID = "double.0.img.out", (16, 16)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A store of 40 rendered scenes whose 3 channels are: red-object token, any-object token, background token."""
    from difflens.interpret.labels import label_image

    root = tmp_path_factory.mktemp("planted")
    scenes = sample_scenes(40, seed=3)
    images = np.stack([render(s)[0] for s in scenes])
    acts = []
    for image in images:
        labels, reading = label_image(image, GRID)  # (T, C) bool, from the oracle's reading of the pixels
        from difflens.interpret.labels import all_concepts

        names = all_concepts()
        red, obj, bg = (labels[:, names.index(c)] for c in ("color:red", "part:object", "part:background"))
        acts.append(np.stack([red, obj, bg], 1).astype(np.float32) * np.array([2.0, 1.0, 0.5], dtype=np.float32))
    acts_BTD = torch.from_numpy(np.stack(acts))
    n, T, D = acts_BTD.shape
    writer = StoreWriter(root, dtype="float16")
    writer.prepare({"model": "embedded"}, [{"image_id": i, "prompt": s.caption, "seed": i} for i, s in enumerate(scenes)])
    ids = list(range(n))
    writer.write_chunk(0, ids, images, {(SITE, 0): ChunkRows(acts_BTD.reshape(n * T, D), np.repeat(ids, T),
                                                               np.tile(np.arange(T), n))})
    writer.finalize([EntrySpec(SITE, 0, D, "image", T, GRID)], 1,
                    {"model": "embedded", "n_images": n, "prompts_hash": "planted"}, holdout=0.25)
    neurons = NeuronBasis(D)
    neurons.meta = {"site": SITE, "step": 0, "store": dl.open_store(root).identity(), "split": "train"}
    index = dl.feature_index(neurons, root, out=root / "index", top_n=12, samples=24)
    return root, index


def test_oracle_explainer_names_the_planted_concept_and_scores_it(planted, tmp_path):
    _, index = planted
    summary = dl.autointerp(index, out=tmp_path / "ai", features="0,1,2", explain_images=4, test_positives=4,
                            negatives_random=2, negatives_other=2)
    red = summary["features"]["0"]
    assert red["explanation"]["concept"] == "color:red" and "red" in red["explanation"]["explanation"]
    assert red["score"] == pytest.approx(1.0) and red["auroc"] == pytest.approx(1.0)
    assert summary["features"]["2"]["explanation"]["concept"] in ("part:background",) or \
        summary["features"]["2"]["explanation"]["concept"].startswith("bg:")
    assert "perfect vision model" in summary["note"]
    saved = json.loads((tmp_path / "ai" / "results.json").read_text())
    assert saved["explained"] == 3 and saved["failed"] == []


def test_explainer_and_test_sets_are_disjoint_and_negatives_are_silent(planted):
    _, index = planted
    cfg = AutointerpConfig(explain_images=4, explain_quantiles=2, test_positives=4, negatives_random=3,
                           negatives_other=3)
    explain, tests = example_sets(index, 0, cfg, np.random.default_rng(0))
    shown = {(e.image_id, e.step) for e in explain}
    assert shown.isdisjoint({(e.image_id, e.step) for e in tests})
    negatives = [e for e in tests if not e.positive]
    assert len(negatives) >= 3 and any(e.painted_by not in (None, 0) for e in negatives)
    for e in negatives:  # verified: latent 0 is silent on every negative
        assert float(index.activation_map(0, e.image_id, e.step).max()) <= 0
    for e in [x for x in tests if x.positive]:
        assert float(index.activation_map(0, e.image_id, e.step).max()) > 0


def test_oracle_backend_refuses_other_models_and_openai_dry_run_sends_nothing(planted, tmp_path, monkeypatch):
    root, index = planted
    index.store.meta["model"] = "flux-schnell"
    try:
        with pytest.raises(ValueError, match="oracle backend reads the shapes world"):
            run_autointerp(index, AutointerpConfig(features="0"), tmp_path / "x")
    finally:
        index.store.meta["model"] = "embedded"
    from difflens.interpret.vlm import VLMConfig

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = run_autointerp(index, AutointerpConfig(backend="openai", features="0,1", dry_run=True), tmp_path / "y",
                          vlm_config=VLMConfig(base_url="http://127.0.0.1:9/v1"))
    assert plan["dry_run"]["requests"] == 2 and plan["judge_calls"] > 0
