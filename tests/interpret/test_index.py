"""Feature index: every statistic equals a brute-force dense computation; split, maps, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.dictionaries import ITDA, ITDAConfig, NeuronBasis, SAEConfig, TopKSAE, load_dictionary, save_dictionary
from difflens.interpret.index import FeatureIndex, IndexConfig, build_feature_index, example_keys
from stores import make_site_store, synthetic_acts

SITE = "double.1.img.out"
TEXT_SITE = "double.1.txt.out"
STEPS = (0, 3)
N_IMAGES, N_TOK, WIDTH = 24, 16, 16
CFG = IndexConfig(top_n=5, samples=8, quantile_bins=3, histogram_bins=16, histogram_min=0.5, histogram_max=300.0,
                  batch_images=5)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    root = make_site_store(tmp_path_factory.mktemp("index-store"),
                           {SITE: synthetic_acts(N_IMAGES, WIDTH, 0, N_TOK), TEXT_SITE: synthetic_acts(N_IMAGES, WIDTH, 1, N_TOK)},
                           steps=STEPS, n_tok=N_TOK)
    dl.open_store(root).set_holdout(0.25, seed=0)
    return root


def random_sae(seed: int = 0, site: str = SITE, latents: int = 40) -> TopKSAE:
    sae = TopKSAE(WIDTH, SAEConfig(num_latents=latents, k=4, normalization="none"), seed=seed)
    with torch.no_grad():  # biases that push some of the k winners below zero (ReLU zeros: inactive slots)
        sae.b_enc.copy_(torch.randn(latents, generator=torch.Generator().manual_seed(seed)) * 20 - 10)
    sae.meta = {"site": site, "step": STEPS[0]}
    return sae


def random_itda() -> ITDA:
    itda = ITDA(WIDTH, ITDAConfig(k=3, normalization="none"))
    itda.add_atoms(torch.randn(30, WIDTH, generator=torch.Generator().manual_seed(3)), {})
    itda.meta = {"site": SITE, "step": STEPS[0]}
    return itda


def neurons(k=None) -> NeuronBasis:
    basis = NeuronBasis(WIDTH, k)
    basis.meta = {"site": SITE, "step": STEPS[0]}
    return basis


def brute_force(dictionary, store, site: str, steps, split: str) -> dict:
    """Dense (tokens × latents) codes of every row of the split: the statistics the index must reproduce."""
    F = dictionary.num_latents
    edges = torch.logspace(np.log10(CFG.histogram_min), np.log10(CFG.histogram_max), CFG.histogram_bins + 1,
                           dtype=torch.float64).float()
    out = {"tokens": [], "count": [], "sum": [], "max": [], "images": [], "hist": torch.zeros(F, CFG.histogram_bins + 2,
                                                                                                dtype=torch.int64),
           "score": {}}
    for step in steps:
        reader = store.reader(site, step, split)
        acts, rows = next(reader.iter_batches(reader.num_rows, shuffle=False))
        image = torch.from_numpy(reader.trace(rows)["image_id"])
        codes = dictionary.encode(acts)
        dense = codes.to_dense(F) if not (isinstance(dictionary, NeuronBasis) and dictionary.k is None) else codes.values
        active = dense > 0
        out["tokens"].append(len(rows))
        out["count"].append(active.sum(0))
        out["sum"].append(torch.where(active, dense, 0).double().sum(0))
        out["max"].append(dense.clamp_min(0).max(0).values)
        for f in range(F):
            b = torch.bucketize(dense[active[:, f], f], edges, right=True)
            out["hist"][f] += torch.bincount(b, minlength=CFG.histogram_bins + 2)
        fired = torch.zeros(F, dtype=torch.int64)
        for i in image.unique().tolist():
            score = dense[image == i].clamp_min(0).max(0).values
            fired += score > 0
            for f in torch.nonzero(score > 0).squeeze(1).tolist():
                out["score"][(f, i, step)] = float(score[f])
        out["images"].append(fired)
    for key in ("count", "sum", "max", "images"):
        out[key] = torch.stack(out[key])
    return out


@pytest.mark.parametrize("make", [random_sae, neurons, lambda: neurons(k=3), random_itda],
                         ids=["sae", "neurons", "neurons-k3", "itda"])
def test_index_equals_brute_force(store_path, make):
    dictionary = make()
    store = dl.open_store(store_path)
    index = build_feature_index(dictionary, store, steps="all", config=CFG, progress=False)
    want = brute_force(dictionary, store, SITE, STEPS, "all")
    F = dictionary.num_latents
    assert index.steps == list(STEPS) and index.num_latents == F and index.complete
    assert index.tokens == {s: n for s, n in zip(STEPS, want["tokens"])}
    t = index.tensors
    assert torch.equal(t["count"], want["count"]) and torch.equal(t["images"], want["images"])
    assert torch.allclose(t["sum"], want["sum"], rtol=1e-5)
    assert torch.allclose(t["max"], want["max"], rtol=1e-6)
    assert torch.equal(t["hist"], want["hist"])
    assert torch.allclose(index.max_activation, want["max"].max(0).values)
    mean = want["sum"].sum(0) / want["count"].sum(0).clamp_min(1)
    assert torch.allclose(index.mean_activation.double(), mean, rtol=1e-5)
    assert torch.equal(index.alive(), want["count"].sum(0) > 0)
    assert not bool(index.alive().all()) or F == WIDTH  # the biased SAE / sparse dictionaries leave some dead
    for f in range(F):
        assert index.frequency(f) == pytest.approx({s: int(want["count"][j, f]) / want["tokens"][j]
                                                    for j, s in enumerate(STEPS)})
        edges, counts = index.histogram(f)
        assert edges.shape == (CFG.histogram_bins + 1,) and torch.equal(counts, want["hist"][f, 1:-1])
        assert int(index.histogram(f, outliers=True)[1].sum()) == int(want["count"][:, f].sum())
        examples = {(i, s): v for (g, i, s), v in want["score"].items() if g == f}
        best = sorted(examples.values(), reverse=True)[: CFG.top_n]
        top = index.top_images(f)
        assert [e["score"] for e in top] == pytest.approx(best)  # best first; ties may swap images, not scores
        assert all(examples[(e["image_id"], e["step"])] == pytest.approx(e["score"]) for e in top)
        # the reservoir: the `samples` firing examples with the largest hash keys, sorted by score ascending
        keys = {ex: int(example_keys(CFG.seed, torch.tensor([f]), torch.tensor([ex[0]]), ex[1])) for ex in examples}
        chosen = sorted(keys, key=keys.get, reverse=True)[: CFG.samples]
        samples = index.samples(f)
        assert {(e["image_id"], e["step"]) for e in samples} == set(chosen)
        assert all(examples[(e["image_id"], e["step"])] == pytest.approx(e["score"]) for e in samples)
        assert [e["score"] for e in samples] == sorted(e["score"] for e in samples)
        bins = index.quantile_sets(f)
        assert len(bins) == CFG.quantile_bins and [e for b in bins for e in b] == samples
        assert all(max(e["score"] for e in lo) <= min(e["score"] for e in hi) for lo, hi in zip(bins, bins[1:]) if lo and hi)
        assert max(len(b) for b in bins) - min(len(b) for b in bins) <= 1
        assert index.image_frequency(f) == pytest.approx({s: int(want["images"][j, f]) / N_IMAGES
                                                          for j, s in enumerate(STEPS)})
        assert index.step_stats(f)[STEPS[1]]["max"] == pytest.approx(float(want["max"][1, f]))


def test_quantile_samples_for_explanation_and_test_sets(store_path):
    index = build_feature_index(neurons(), dl.open_store(store_path), steps="all", config=CFG, progress=False)
    explain = index.sample_quantiles(0, 3, seed=1)
    assert [e["quantile"] for e in explain] == [0, 1, 2]  # one per bin, lowest activations first
    test = index.sample_quantiles(0, 3, seed=1, exclude=explain)
    assert not {(e["image_id"], e["step"]) for e in explain} & {(e["image_id"], e["step"]) for e in test}
    assert len(test) == 3 and all(e in index.samples(0) for e in [{k: v for k, v in e.items() if k != "quantile"}
                                                                   for e in explain + test])


def test_split_is_honoured(store_path):
    store = dl.open_store(store_path)
    sae = random_sae()
    held = set(store.holdout["image_ids"])
    parts = {split: build_feature_index(sae, store, steps="all", config=IndexConfig(**{**CFG.__dict__, "split": split}),
                                        progress=False) for split in ("all", "train", "held-out")}
    assert parts["held-out"].tokens == {s: len(held) * N_TOK for s in STEPS}
    assert parts["train"].tokens == {s: (N_IMAGES - len(held)) * N_TOK for s in STEPS}
    for key in ("count", "images", "hist"):
        assert torch.equal(parts["train"].tensors[key] + parts["held-out"].tensors[key], parts["all"].tensors[key])
    for f in range(sae.num_latents):
        assert all(e["image_id"] in held for e in parts["held-out"].top_images(f) + parts["held-out"].samples(f))
        assert all(e["image_id"] not in held for e in parts["train"].top_images(f) + parts["train"].samples(f))
    want = brute_force(sae, store, SITE, STEPS, "held-out")
    assert torch.equal(parts["held-out"].tensors["count"], want["count"])


def test_activation_maps_equal_encoding_the_image_rows(store_path, tmp_path):
    store = dl.open_store(store_path)
    sae = random_sae()
    save_dictionary(sae, tmp_path / "sae")
    saved = load_dictionary(tmp_path / "sae")
    index = build_feature_index(saved, store, steps=[3], config=CFG, out=tmp_path / "index", progress=False)
    assert index.path == (tmp_path / "index").resolve() == FeatureIndex.load(tmp_path / "index").path
    latent = int(torch.argmax(index.tensors["count"].sum(0)))
    top = index.top_images(latent)[0]
    reader = store.reader(SITE, 3)
    rows = index.image_rows(top["image_id"], 3)
    assert len(rows) == N_TOK and set(reader.trace(rows)["image_id"]) == {top["image_id"]}
    codes = saved.encode(reader.read_rows(rows))
    dense = codes.to_dense(saved.num_latents)[:, latent]
    tokens = torch.from_numpy(reader.trace(rows)["token_index"])
    amap = FeatureIndex.load(tmp_path / "index").activation_map(latent, top["image_id"], 3)  # loads the dictionary
    assert amap.shape == (4, 4) and torch.allclose(amap.reshape(-1)[tokens], dense)
    assert float(amap.max()) == pytest.approx(top["score"])
    # text sites give (T,) maps, in token order
    text = build_feature_index(random_sae(site=TEXT_SITE), store, steps=[0], config=CFG, progress=False)
    latent = int(torch.argmax(text.tensors["count"].sum(0)))
    top = text.top_images(latent)[0]
    tmap = text.activation_map(latent, top["image_id"], 0)
    assert tmap.shape == (N_TOK,) and float(tmap.max()) == pytest.approx(top["score"])
    maps = text.activation_maps(latent, text.top_images(latent)[:3])
    assert [float(m.max()) for m in maps] == pytest.approx([e["score"] for e in text.top_images(latent)[:3]])


def test_stop_and_resume_gives_the_identical_index(store_path, tmp_path):
    store = dl.open_store(store_path)
    sae = random_sae()
    cfg = IndexConfig(**{**CFG.__dict__, "checkpoint_every": 2})
    whole = build_feature_index(sae, store, steps="all", config=cfg, progress=False)
    out = tmp_path / "index"
    part = build_feature_index(sae, store, steps="all", config=cfg, out=out, progress=False, max_batches=3)
    assert not part.complete and part.tokens[STEPS[0]] == 3 * CFG.batch_images * N_TOK
    header = json.loads((out / "index.json").read_text())
    assert header["complete"] is False and header["position"] == {"step_index": 0, "batch": 3}
    # a second stop across the step boundary (5 batches per step), then the rest
    part = build_feature_index(sae, store, steps="all", config=cfg, out=out, progress=False, max_batches=4)
    assert FeatureIndex.read_header(out)["position"] == {"step_index": 1, "batch": 2}
    done = build_feature_index(sae, store, steps="all", config=cfg, out=out, progress=False)
    assert done.complete
    for key, value in whole.tensors.items():
        assert torch.equal(done.tensors[key], value), key
    loaded = FeatureIndex.load(out)
    assert loaded.complete and all(torch.equal(loaded.tensors[k], v) for k, v in whole.tensors.items())
    assert loaded.top_images(7) == whole.top_images(7) and loaded.frequency(7) == whole.frequency(7)
    # a finished folder of the same job is loaded, not rebuilt
    again = build_feature_index(sae, store, steps="all", config=cfg, out=out, progress=False, max_batches=0)
    assert again.complete and torch.equal(again.tensors["count"], whole.tensors["count"])


def test_index_folder_refuses_another_dictionary_store_or_config(store_path, tmp_path):
    store = dl.open_store(store_path)
    sae = random_sae()
    out = tmp_path / "index"
    build_feature_index(sae, store, config=CFG, out=out, progress=False, max_batches=1)
    with pytest.raises(ValueError, match="fingerprint"):
        build_feature_index(random_sae(seed=1), store, config=CFG, out=out, progress=False)
    with pytest.raises(ValueError, match="top_n"):
        build_feature_index(sae, store, config=IndexConfig(**{**CFG.__dict__, "top_n": 6}), out=out, progress=False)
    with pytest.raises(ValueError, match="steps"):
        build_feature_index(sae, store, steps="all", config=CFG, out=out, progress=False)
    other = make_site_store(tmp_path / "other", {SITE: synthetic_acts(N_IMAGES + 4, WIDTH, 0, N_TOK)}, steps=STEPS,
                            n_tok=N_TOK)
    with pytest.raises(ValueError, match="n_images"):
        build_feature_index(sae, other, config=CFG, out=out, progress=False)
    done = build_feature_index(sae, store, config=CFG, out=out, progress=False)  # the same job resumes fine
    assert done.complete
    with pytest.raises(ValueError, match="not the one this feature index was built with"):
        FeatureIndex.load(out, dictionary=random_sae(seed=1))
    with pytest.raises(ValueError, match="not the one this feature index was built on"):
        FeatureIndex.load(out, store=dl.open_store(other))
    fresh = build_feature_index(random_sae(seed=1), store, config=CFG, out=out, progress=False, resume=False)
    assert fresh.complete and FeatureIndex.load(out, dictionary=random_sae(seed=1)).complete
    with pytest.raises(ValueError, match="no held-out split"):
        build_feature_index(sae, other, config=IndexConfig(split="held-out"), progress=False)
    (out / "index.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt feature index"):
        build_feature_index(sae, store, config=CFG, out=out, progress=False)
    with pytest.raises(FileNotFoundError, match="no feature index"):
        FeatureIndex.load(tmp_path / "nowhere")


def test_unknown_latent_step_or_image_is_a_clear_error(store_path):
    sae = random_sae()
    index = build_feature_index(sae, dl.open_store(store_path), config=CFG, progress=False)
    for bad in (sae.num_latents, -1):
        with pytest.raises(ValueError, match=f"latent {bad} does not exist"):
            index.top_images(bad)
    with pytest.raises(ValueError, match="integer"):
        index.frequency("3")
    with pytest.raises(ValueError, match="step 3 is not in this feature index"):
        index.activation_map(0, 0, 3)
    with pytest.raises(ValueError, match="image 999 has no rows"):
        index.image_rows(999, 0)
    with pytest.raises(ValueError, match="no step 5"):
        build_feature_index(sae, dl.open_store(store_path), steps=[5], config=CFG, progress=False)
    with pytest.raises(ValueError, match="width"):
        build_feature_index(NeuronBasis(WIDTH + 1), dl.open_store(store_path), site=SITE, steps=[0], progress=False)


def test_histogram_buckets_equal_bucketize_even_at_the_edges():
    from difflens.interpret.index import Accumulator, empty_tensors

    acc = Accumulator(empty_tensors(2, [0], 1, IndexConfig()), IndexConfig(), "cpu")
    edges = acc.t["hist_edges"]
    values = torch.cat([torch.exp(torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 6), edges,
                        torch.nextafter(edges, torch.zeros_like(edges)), torch.nextafter(edges, torch.full_like(edges, 1e9))])
    assert torch.equal(acc.bins(values), torch.bucketize(values, edges, right=True))


def test_matryoshka_index_records_each_latents_prefix_level(store_path, tmp_path):
    from difflens.dictionaries import MatryoshkaConfig, MatryoshkaSAE

    store = dl.open_store(store_path)
    sae = MatryoshkaSAE(WIDTH, MatryoshkaConfig(num_latents=40, k=4, normalization="none", prefixes=(0.1, 0.5, 1.0)))
    sae.meta = {"site": SITE, "step": STEPS[0]}
    built = build_feature_index(sae, store, config=CFG, out=tmp_path / "index", progress=False)
    loaded = FeatureIndex.load(tmp_path / "index")
    for index in (built, loaded):
        assert index.prefix_sizes == [4, 20, 40]
        assert index.prefix_levels().tolist() == sae.prefix_levels().tolist() == [0] * 4 + [1] * 16 + [2] * 20
        assert [index.prefix_level(i) for i in (0, 3, 4, 19, 20, 39)] == [0, 0, 1, 1, 2, 2]
    assert json.loads((tmp_path / "index" / "index.json").read_text())["prefix_sizes"] == [4, 20, 40]
    with pytest.raises(ValueError, match="does not exist"):
        loaded.prefix_level(40)
    plain = build_feature_index(random_sae(), store, config=CFG, progress=False)  # not Matryoshka: no levels
    assert plain.prefix_sizes is None and plain.prefix_levels() is None and plain.prefix_level(0) is None
