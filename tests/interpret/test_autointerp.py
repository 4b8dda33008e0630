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
from difflens.interpret.cards import card_image, feature_grid
from difflens.interpret.heatmap import STYLES, upsample_map
from difflens.store import ChunkRows, EntrySpec, StoreWriter
from difflens.world import render, sample_scenes

SITE, TEXT_SITE, GRID = "double.0.img.out", "double.0.txt.out", (16, 16)


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
    text_BTD = torch.rand(n, 24, D, generator=torch.Generator().manual_seed(0)) - 0.5  # a text site, for its card
    writer.write_chunk(0, ids, images, {
        (SITE, 0): ChunkRows(acts_BTD.reshape(n * T, D), np.repeat(ids, T), np.tile(np.arange(T), n)),
        (TEXT_SITE, 0): ChunkRows(text_BTD.reshape(n * 24, D), np.repeat(ids, 24), np.tile(np.arange(24), n))})
    writer.finalize([EntrySpec(SITE, 0, D, "image", T, GRID), EntrySpec(TEXT_SITE, 0, D, "text", 24, None)], 1,
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
            run_autointerp(index, AutointerpConfig(features="1"), tmp_path / "x")
    finally:
        index.store.meta["model"] = "embedded"
    from difflens.interpret.vlm import VLMConfig

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = run_autointerp(index, AutointerpConfig(backend="openai", features="0,1", dry_run=True), tmp_path / "y",
                          vlm_config=VLMConfig(base_url="http://127.0.0.1:9/v1"))
    assert plan["dry_run"]["requests"] == 2 and plan["judge_calls"] > 0


def test_autointerp_agrees_with_ground_truth_on_the_planted_latent(planted, tmp_path):
    from difflens.interpret.autointerp import agreement
    from difflens.interpret.truth import truth_report

    root, index = planted
    summary = dl.autointerp(index, out=tmp_path / "ai", features="0,1,2", explain_images=4, test_positives=4)
    truth = truth_report(index.dictionary, index.store)
    red = next(r for r in truth["latents"] if r["latent"] == 0)
    assert red["concept"] == "color:red" and red["f1"] == pytest.approx(1.0)
    agree = agreement(summary, truth)
    assert agree["n"] == 3 and agree["named_share"] >= 2 / 3
    # the perfect judge, told each latent's ground-truth concept, scores autointerp's own test examples
    judged = truth_report(index.dictionary, index.store, autointerp=summary, index=index, sparse_sizes=())
    red = next(r for r in judged["latents"] if r["latent"] == 0)
    assert red["precise_concept"] == "color:red" and red["detection_token"] == pytest.approx(1.0)
    assert 0.5 < red["detection_image"] <= 1.0
    assert judged["detection"]["latents"] == 3
    assert {"spearman", "spearman_precision", "spearman_perfect_judge"} <= set(agreement(summary, judged))


def test_cards_for_an_image_site_and_a_text_site(planted, tmp_path):
    root, index = planted
    card = dl.feature_card(index, 0, tmp_path / "red.png")
    assert card.stat().st_size > 20_000
    with pytest.raises(ValueError, match="latent 7 does not exist"):
        dl.feature_card(index, 7, tmp_path / "nope.png")
    # the spotlight shows the red latent's hottest token in its own colour; the blue paint hides it
    top = index.top_images(0)[0]
    image = index.store.load_image(top["image_id"])
    amap = index.activation_map(0, top["image_id"], top["step"]).numpy()
    hot = upsample_map(amap, *image.shape[:2]) == amap.max()
    drawn = {s: card_image(index, 0, top, s) for s in STYLES}
    drawn = {s: d[:: d.shape[0] // image.shape[0], :: d.shape[1] // image.shape[1]] for s, d in drawn.items()}
    assert (drawn["spotlight"][hot] == image[hot]).all() and not (drawn["blue"][hot] == image[hot]).all()
    assert feature_grid(index, [0, 1], tmp_path / "grid.png", style="spotlight").stat().st_size > 10_000
    with pytest.raises(ValueError, match="style must be one of"):
        feature_grid(index, [0, 1], tmp_path / "bad.png", style="outline")
    neurons = NeuronBasis(3)
    neurons.meta = {"site": TEXT_SITE, "step": 0, "store": index.store.identity(), "split": "train"}
    text_index = dl.feature_index(neurons, root, top_n=4, samples=8)
    assert dl.feature_card(text_index, 1, tmp_path / "text.png").stat().st_size > 10_000


def test_openai_backend_end_to_end_records_failures_and_a_rerun_fills_the_gaps(planted, tmp_path, monkeypatch):
    """Against a local chat-completions server: explanations, judge scores, a failing latent recorded as failed
    (not as a low score), and a rerun that sends only the missing calls."""
    from chat_stub import ChatServer

    from difflens.interpret.vlm import VLMConfig

    _, index = planted
    broken = {"on": True}

    def respond(i, body):
        system = body["messages"][0]["content"]
        system = system if isinstance(system, str) else json.dumps(system)
        text = json.dumps(body["messages"][1]["content"])
        if "study one internal feature" in system:
            return ("ok", json.dumps({"per_image": ["red"], "explanation": "red objects"}))
        if broken["on"] and "judge/1/" not in text and i % 2:  # some judge calls fail while the server is broken
            return ("status", 400, {"error": {"message": "bad request"}})
        return ("ok", json.dumps({"reason": "looks right", "score": 0.9}))

    server = ChatServer(respond)
    monkeypatch.setenv("DIFFLENS_TEST_KEY", "sk-secret-xyz")
    vlm = VLMConfig(base_url=server.url, model="test-vlm", api_key_env="DIFFLENS_TEST_KEY", max_retries=1,
                    retry_base_s=0.01, retry_max_s=0.02, timeout_s=5)
    try:
        cfg = AutointerpConfig(backend="openai", features="0,1", explain_images=2, test_positives=2,
                               negatives_random=1, negatives_other=1, image_size=64)
        first = run_autointerp(index, cfg, tmp_path / "ai", vlm_config=vlm)
        assert first["failed"], "the broken server should leave some latent failed"
        assert all(first["features"][str(k)]["status"] == "failed" for k in first["failed"])
        calls = len(server.calls)
        broken["on"] = False
        second = run_autointerp(index, cfg, tmp_path / "ai", vlm_config=vlm)
        assert second["failed"] == [] and second["explained"] == 2
        assert 0 < len(server.calls) - calls < calls  # only the gaps were sent again (the rest came from the cache)
        red = second["features"]["0"]  # the judge says 0.9 to everything: 0.9 on positives, 1 - 0.9 on negatives
        assert any(not t["positive"] for t in red["tests"]) and red["score"] == pytest.approx(0.5)
    finally:
        server.close()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sk-secret-xyz" not in path.read_bytes()


def test_every_world_concept_has_a_phrase_in_words():
    """The oracle explainer words every concept the labeller knows, rich ones included (a rich store's demo once
    stopped on part:boundary)."""
    from difflens.interpret.autointerp import concept_phrase
    from difflens.interpret.labels import all_concepts

    for concept in all_concepts():
        phrase = concept_phrase(concept)
        assert phrase and not any(c in phrase for c in ":&"), (concept, phrase)
    assert concept_phrase("part:house-roof") == "the roof of houses"
    assert concept_phrase("bg:pink&striped") == "the pink striped background"
    assert concept_phrase("pattern:dotted") == "dotted objects"
