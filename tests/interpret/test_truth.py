"""Ground truth of the embedded world: token labels from renders of known scenes, metrics with planted answers,
and the per-latent report end to end on a small synthetic store (a latent that is exactly "red" must be found)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflens.dictionaries import NeuronBasis
from difflens.dictionaries.base import SparseCodes
from difflens.interpret.labels import (all_concepts, concept_of_tokens, label_image, labels_path, token_labels,
                                       token_owner)
from difflens.interpret.truth import (ProbeFeatures, RandomDirections, auroc, best_f1_threshold, f1_score,
                                      fit_logistic, fit_logistic_newton, scores_at, sparse_probes, truth_report,
                                      write_truth)
from difflens.interpret.truth_stats import auroc_from_counts
from difflens.store import ActivationStore, ChunkRows, EntrySpec, StoreWriter
from difflens.world import ObjectSpec, Scene, render
from stores import WORLD_DIM as DIM, make_world_store

torch.set_num_threads(1)

GRID = (16, 16)
SITE = "double.1.img.out"
CONCEPTS = all_concepts()


def _col(labels_TC: np.ndarray, name: str) -> np.ndarray:
    return labels_TC[:, CONCEPTS.index(name)].reshape(GRID)


def _block(rows, cols) -> np.ndarray:
    m = np.zeros(GRID, bool)
    m[rows[0]: rows[1] + 1, cols[0]: cols[1] + 1] = True
    return m


# ---------------------------------------------------------------------------------------------------------------
# labels from renders of known scenes

def test_labels_of_a_centred_red_square():
    # a large square at the centre spans pixels 24..39 exactly: token rows and columns 6..9 (4×4 px per token)
    image, _ = render(Scene("gray", (ObjectSpec("square", "red", "large", "center"),)))
    labels, reading = label_image(image, GRID)
    assert labels.shape == (256, len(CONCEPTS))
    obj = _block((6, 9), (6, 9))
    for name in ("part:object", "color:red", "shape:square", "size:large", "cell:center", "row:middle", "col:center",
                 "pair:red&square", "pair:red&large", "pair:red&center-col", "pair:square&middle-row"):
        assert (_col(labels, name) == obj).all(), name
    assert (_col(labels, "part:interior") == _block((7, 8), (7, 8))).all()
    assert (_col(labels, "part:edge") == obj & ~_block((7, 8), (7, 8))).all()
    assert (_col(labels, "bg:gray") == ~obj).all() and (_col(labels, "part:background") == ~obj).all()
    assert not _col(labels, "bg:white").any() and not _col(labels, "color:blue").any()
    # background tokens next to the square, by side; the diagonal corners are on no side
    sides = {"below": _block((10, 10), (6, 9)), "above": _block((5, 5), (6, 9)),
             "left": _block((6, 9), (5, 5)), "right": _block((6, 9), (10, 10))}
    for side, where in sides.items():
        assert (_col(labels, f"side:{side}") == where).all(), side
        assert (_col(labels, f"near:{side}:red") == where).all(), side
        assert not _col(labels, f"near:{side}:yellow").any()
    assert not labels.reshape(16, 16, -1)[5, 5, CONCEPTS.index("side:above")]
    # places within the square (rows and columns 6..9): its outline rows and columns, the 4 corners, its centre
    places = {"top-edge": _block((6, 6), (6, 9)), "bottom-edge": _block((9, 9), (6, 9)),
              "left-edge": _block((6, 9), (6, 6)), "right-edge": _block((6, 9), (9, 9)),
              "centre": _block((7, 8), (7, 8))}
    places["corner"] = obj & ((places["top-edge"] | places["bottom-edge"]) & (places["left-edge"] | places["right-edge"]))
    assert places["corner"].sum() == 4
    for place, where in places.items():
        assert (_col(labels, f"place:{place}") == where).all(), place
        assert (_col(labels, f"place:{place}&red") == where).all() and (_col(labels, f"place:{place}&square") == where).all()
        assert not _col(labels, f"place:{place}&blue").any()


def test_concepts_are_tagged_coarse_or_specific():
    from difflens.interpret.labels import COARSE_CONCEPTS, concept_kind

    assert {c for c in CONCEPTS if concept_kind(c) == "coarse"} == set(COARSE_CONCEPTS)
    assert concept_kind("color:red") == concept_kind("place:bottom-edge&purple") == "specific"


def test_labels_of_two_objects_follow_the_half_pixel_rule():
    scene = Scene("black", (ObjectSpec("circle", "yellow", "small", "top left", (0.7, -0.4)),
                            ObjectSpec("triangle", "blue", "large", "bottom right", (-0.3, 0.9))))
    image, masks = render(scene)
    labels, reading = label_image(image, GRID)
    # the oracle reads renders exactly (colours snap to the palette), masks included
    assert [(o.color, o.shape, o.size, o.position) for o in reading.objects] == \
        [("yellow", "circle", "small", "top left"), ("blue", "triangle", "large", "bottom right")]
    for o, m in zip(reading.objects, masks):
        assert (o.mask == m).all()
    # a token is an object's when at least half of its 4×4 pixel block is inside the object's mask
    share = [m.reshape(16, 4, 16, 4).mean(axis=(1, 3)) for m in masks]
    yellow, blue = share[0] >= 0.5, share[1] >= 0.5
    assert yellow.any() and blue.any() and not (yellow & blue).any()
    assert (token_owner(reading, GRID) == np.where(yellow, 0, np.where(blue, 1, -1))).all()
    assert (_col(labels, "color:yellow") == yellow).all() and (_col(labels, "pair:yellow&circle") == yellow).all()
    assert (_col(labels, "cell:top-left") == yellow).all() and (_col(labels, "pair:yellow&left-col") == yellow).all()
    assert (_col(labels, "shape:triangle") == blue).all() and (_col(labels, "pair:triangle&bottom-row") == blue).all()
    assert (_col(labels, "size:small") == yellow).all() and (_col(labels, "size:large") == blue).all()
    # "just below a yellow object": background tokens whose upper neighbour is a yellow token
    below_yellow = np.zeros(GRID, bool)
    below_yellow[1:] = yellow[:-1]
    below_yellow &= ~(yellow | blue)
    assert below_yellow.any() and (_col(labels, "near:below:yellow") == below_yellow).all()
    right_of_blue = np.zeros(GRID, bool)
    right_of_blue[:, 1:] = blue[:, :-1]
    right_of_blue &= ~(yellow | blue)
    assert (_col(labels, "near:right:blue") == right_of_blue).all()
    # edge: an object token with a 4-neighbour outside the object
    interior = blue.copy()
    interior[1:] &= blue[:-1]
    interior[:-1] &= blue[1:]
    interior[:, 1:] &= blue[:, :-1]
    interior[:, :-1] &= blue[:, 1:]
    interior[[0, -1], :] = interior[:, [0, -1]] = False
    assert (_col(labels, "part:interior") == interior).all()
    assert (_col(labels, "part:edge") == (yellow | blue) & ~interior).all()


# ---------------------------------------------------------------------------------------------------------------
# metrics with planted answers

def test_auroc_and_f1_helpers():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    s = np.round(rng.normal(size=400) + 1.5 * y, 1)  # ties on purpose
    pairs = (s[y][:, None] > s[~y][None]).mean() + 0.5 * (s[y][:, None] == s[~y][None]).mean()
    assert auroc(s, y)[0] == pytest.approx(pairs)
    assert auroc(np.where(y, 2.0, 1.0), y)[0] == 1.0 and np.isnan(auroc(s, np.ones(400, bool))[0])
    # binned counts (ascending bins) give the same number as the scores they bin
    bins = np.unique(s)
    pos = np.array([(s[y] == b).sum() for b in bins])
    neg = np.array([(s[~y] == b).sum() for b in bins])
    assert auroc_from_counts(pos[None], neg[None])[0] == pytest.approx(pairs)
    assert f1_score(5, 10, 5) == pytest.approx(2 * 5 / 15) and f1_score(0, 0, 0) == 0
    # the best-F1 threshold separates a planted concept exactly, and is measured as such
    scores = torch.tensor(np.stack([np.where(y, 3.0, 0.0) + rng.random(400) * 0.1, rng.random(400)], 1))
    labels = torch.tensor(np.stack([y, y], 1))
    thr, best = best_f1_threshold(scores, labels)
    assert best[0] == 1.0 and best[1] < 0.7
    measured = scores_at(scores, labels, thr)
    assert measured["f1"][0] == 1.0 and measured["precision"][0] == 1.0 and measured["recall"][0] == 1.0


def test_logistic_fits_agree():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 2000, 4, generator=g)
    Y = X[..., 0] + 0.5 * torch.randn(3, 2000, generator=g) > 1.0
    W1, b1 = fit_logistic(X, Y, max_iter=300)
    W2, b2 = fit_logistic_newton(X, Y)
    torch.testing.assert_close(W1.double(), W2.double(), atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(b1.double(), b2.double(), atol=2e-3, rtol=1e-3)


def test_sparse_probes_of_every_size_in_one_pass_match_separate_runs_and_dense_features():
    """Sizes share one ranking and one column gather; sparse codes and the same matrix given dense agree, and a
    concept carried by one feature is read by the size-1 probe."""
    g = torch.Generator().manual_seed(0)
    N, F, K = 1200, 24, 4
    idx = torch.stack([torch.randperm(F, generator=g)[:K] for _ in range(N)])
    vals = torch.rand(N, K, generator=g) + 0.1
    dense = torch.zeros(N, F).scatter_(1, idx, vals)
    Y = torch.stack([dense[:, 3] > 0, (dense[:, 5] > 0) & (dense[:, 7] > 0),
                     torch.rand(N, generator=g) < 0.1], 1).float()
    half = N // 2
    codes = lambda a, b: ProbeFeatures(codes=SparseCodes(vals[a:b], idx[a:b]), num_features=F)
    together = sparse_probes(codes(0, half), codes(half, N), Y[:half], Y[half:], (1, 4, 64))
    assert set(together) == {"1", "4", "64"}  # a size above the feature count keeps its name, uses every feature
    for n in ("1", "4"):
        np.testing.assert_allclose(together[n], sparse_probes(codes(0, half), codes(half, N), Y[:half], Y[half:],
                                                              (int(n),))[n])
    dense_half = lambda a, b: ProbeFeatures(dense_ND=dense[a:b])
    as_dense = sparse_probes(dense_half(0, half), dense_half(half, N), Y[:half], Y[half:], (1, 4, 64))
    for n in together:
        np.testing.assert_allclose(together[n], as_dense[n], atol=1e-6)
    assert together["1"][0] == 1.0 and together["1"][1] < together["4"][1]
    assert together["64"][2] < 0.5  # noise stays unreadable


def test_family_coverage_counts_concepts_at_the_bar():
    from difflens.interpret.truth import family_coverage

    got = family_coverage({"color:red": 0.9, "color:blue": 0.5, "pattern:striped": 0.69, "part:object": None})
    assert got["color"] == {"concepts": 2, "covered": 1, "best_ratio": 0.9}
    assert got["pattern"] == {"concepts": 1, "covered": 0, "best_ratio": 0.69}
    assert got["part"] == {"concepts": 1, "covered": 0, "best_ratio": None}


def test_random_directions_are_unit_and_topk():
    base = NeuronBasis(8, k=3)
    rnd = RandomDirections.like(base, seed=1)
    assert rnd.num_latents == 8 and rnd.k == 3
    torch.testing.assert_close(rnd.directions.norm(dim=1), torch.ones(8))
    x = torch.randn(5, 8)
    codes = rnd.encode(x)
    proj = x @ rnd.directions.t()
    assert codes.values.shape == (5, 3)
    torch.testing.assert_close(codes.values, proj.topk(3).values.clamp_min(0))
    assert not torch.equal(RandomDirections.like(base, seed=2).directions, rnd.directions)


# ---------------------------------------------------------------------------------------------------------------
# end to end on a synthetic store whose activations encode "red" in dimension 0

def _planted_dictionary():
    d = NeuronBasis(DIM, k=4)  # neuron 0 fires (is in the top 4) on red tokens only
    d.meta = {"site": SITE, "step": 0}
    return d


def test_token_labels_cache_and_lookup(tmp_path):
    store = make_world_store(tmp_path)
    labels = token_labels(store)
    assert labels.grid == GRID and labels.num_images == 24 and labels.num_tokens == 256
    assert labels_path(store, GRID).exists()
    again = token_labels(store)
    assert again.concepts == labels.concepts and np.array_equal(again.packed, labels.packed)
    # concepts with too few tokens are dropped: no image here has a red square
    assert "pair:red&square" not in labels.concepts and "color:red" in labels.concepts
    first = labels.image(0)
    want, reading = label_image(store.load_image(0), GRID)
    assert np.array_equal(first, want[:, [CONCEPTS.index(c) for c in labels.concepts]])
    assert labels.readings[0]["objects"][0]["color"] == reading.objects[0].color == "red"
    masks = concept_of_tokens(labels, 0)
    assert set(masks) == {c for c in labels.concepts if first[:, labels.index(c)].any()}
    assert np.array_equal(masks["color:red"], first[:, labels.index("color:red")])
    assert np.array_equal(labels.rows([0, 0], [0, 1]), first[:2])
    assert labels.dense().shape == (24, 256, labels.num_concepts)


def test_labels_refuse_text_sites_and_stores_without_images(tmp_path):
    store = make_world_store(tmp_path / "a", text_site=True)
    d = NeuronBasis(DIM, k=4)
    with pytest.raises(ValueError, match="text-stream"):
        truth_report(d, store, site="double.1.txt.out", step=0)
    bare = make_world_store(tmp_path / "b", images=False)
    with pytest.raises(FileNotFoundError, match="kept no generated images"):
        token_labels(bare)


def test_planted_red_latent_is_found_and_random_directions_are_not(tmp_path):
    store = make_world_store(tmp_path)
    report = truth_report(_planted_dictionary(), store, random_seed=0)
    assert "color:red" in report["concepts"]
    by_latent = {row["latent"]: row for row in report["latents"]}
    red = by_latent[0]
    assert red["concept"] == "color:red"
    for key in ("f1", "precision", "recall", "auroc", "image_auroc", "iou"):
        assert red[key] == 1.0, key
    assert report["coverage"]["color:red"] == 1.0 and report["coverage_latent"]["color:red"] == 0
    assert report["coverage_random"]["color:red"] < 0.5
    assert report["probe_ceiling"]["color:red"] > 0.95 and report["coverage_ratio"]["color:red"] >= 0.95
    assert report["family_coverage"]["color"]["covered"] >= 1
    assert report["sparse_probing"]["per_concept"]["dictionary"]["1"]["color:red"] == 1.0
    assert report["sparse_probing"]["per_concept"]["raw"]["1"]["color:red"] == 1.0
    assert report["sparse_probing"]["per_concept"]["random"]["1"]["color:red"] < 0.5
    assert report["alive"] == DIM and report["explained_share"] == pytest.approx(1 / DIM)  # only neuron 0 is a concept
    assert report["explained_share_random"] == 0.0
    assert report["site"] == SITE and report["step"] == 0 and report["images"] == {"train": 18, "held_out": 6}
    # the required keys, written atomically as JSON
    path = write_truth(report, tmp_path / "out" / "truth.json")
    saved = json.loads(path.read_text())
    for key in ("dictionary", "site", "step", "alive", "explained_share", "explained_share_random", "coverage",
                "probe_ceiling", "latents"):
        assert key in saved
    assert set(saved["latents"][0]) >= {"latent", "concept", "f1", "precision", "recall", "auroc", "image_auroc", "iou"}
    # fewer train images: same rule, still found
    small = truth_report(_planted_dictionary(), store, max_train_images=6)
    assert small["images"]["train"] == 6 and {r["latent"]: r for r in small["latents"]}[0]["f1"] == 1.0
    with pytest.raises(ValueError, match="sparse probe sizes must be positive"):
        truth_report(_planted_dictionary(), store, sparse_sizes=(4, 0))


def test_precision_sees_a_split_concept_and_its_union_covers_it(tmp_path):
    """A perfectly precise latent on a third of red: precision 1, recall about 1/3 (F1 about 0.5, below the F1 bar);
    the three thirds together cover red; a noise latent is precise for nothing; an object-token latent is precise
    only for a coarse concept, so it does not count in the headline."""
    store = make_world_store(tmp_path, split=True)
    report = truth_report(_planted_dictionary(), store, random_seed=0, sparse_sizes=())
    rows = {r["latent"]: r for r in report["latents"]}
    for j in (1, 2, 3):
        third = rows[j]
        assert third["precise_concept"] == "color:red" and third["precise"], j
        assert third["upper_precision"] == 1.0 and third["upper_lift"] > 2
        assert 0.2 < third["upper_recall"] < 0.45, j
        assert third["band_precision"][-1] == 1.0 and third["band_fires"][-1] == third["upper_fires"]
        assert third["ap"] > 0.2 and third["ap_concept"] == "color:red"
    union = report["union_coverage"]["color:red"]
    assert union["latents"] >= 4  # the three thirds and the whole-red latent 0
    assert union["recall"] == 1.0 and union["precision"] == 1.0
    noise = rows[4]
    assert not noise["precise"] and not noise["precise_coarse"] and noise["upper_precision"] < 0.5
    obj = rows[5]
    assert obj["coarse_concept"] == "part:object" and obj["precise_coarse"] and not obj["precise"]
    # the headline counts the whole-red latent and the three thirds; the coarse count adds the object latent
    summary = report["summary"]["dictionary"]
    assert report["precise_share"] == summary["precise_share"] == pytest.approx(4 / DIM)
    assert summary["precise_share_coarse"] == pytest.approx(5 / DIM)
    assert report["headline"]["name"] == "precise_share" and "precise" in report["headline"]["definition"]
    lo, hi = report["headline"]["interval"]
    assert 0 <= lo <= hi <= 1 and report["headline"]["bias_corrected"] is not None
    assert report["summary"]["random"]["precise_share"] < report["precise_share"]
    assert report["precise_by_concept"]["color:red"] == 4


def test_init_control_and_probe_alignment_on_a_small_sae(tmp_path):
    import difflens as dl

    store = make_world_store(tmp_path / "s", split=True)
    sae = dl.train_sae(store, SITE, 0, k=4, num_latents=32, num_tokens=20_000, batch_size=256, lr=3e-3,
                       normalization="none", seed=0, progress=False)
    report = truth_report(sae, store, sparse_sizes=(), bootstrap=50)
    assert set(report["summary"]) == {"dictionary", "random", "init"}
    for k, s in report["summary"].items():
        assert 0 <= s["precise_share"] <= 1 and s["alive"] > 0, k
        assert set(s["intervals"]) == {"precise_share", "f1_share", "precise_share_bias_corrected",
                                       "f1_share_bias_corrected"}
    # the red direction is dim 0..3 of the inputs: a trained latent aligns with red's probe better than random ones
    red = report["union_coverage"]["color:red"]
    assert red["probe_alignment"] > red["probe_alignment_random"]
    no_controls = truth_report(sae, store, sparse_sizes=(), controls=(), bootstrap=0)
    assert set(no_controls["summary"]) == {"dictionary"} and no_controls["precise_share_random"] is None
    with pytest.raises(ValueError, match="unknown controls"):
        truth_report(sae, store, controls=("shuffled",))


def test_random_model_control_is_reported_with_the_trained_models_labels(tmp_path):
    """The random-model control on a tiny model: a teacher-forced capture draws the same images, so the same labels,
    and the same recipe and report run on it."""
    import difflens as dl
    from tiny_models import adapter

    a = adapter("embedded-tiny")
    common = dict(n_images=8, sites=["double.0.img.out"], steps=[1], num_steps=2, batch_size=4, holdout=0.25,
                  progress=False)
    trained = dl.capture(a, out=tmp_path / "trained", **common)
    control = dl.capture(a, out=tmp_path / "control", control="random-init", **common)
    labels = token_labels(trained)
    assert np.array_equal(token_labels(control).packed, labels.packed)
    reports = {}
    for name, store in (("trained", trained), ("control", control)):
        sae = dl.train_sae(store, "double.0.img.out", 1, k=2, num_latents=16, num_tokens=2_000, batch_size=128,
                           normalization="pca", seed=0, progress=False)
        reports[name] = truth_report(sae, store, labels=labels, sparse_sizes=(), bootstrap=20)
        if name == "control":  # the same prompts and images: only the recorded control tells the stores apart
            index = dl.feature_index(sae, top_n=2, samples=4)
            with pytest.raises(ValueError, match="control: index 'random-init', store 'none'"):
                index.store = trained
    for r in reports.values():
        assert set(r["summary"]) == {"dictionary", "random", "init"} and r["concepts"] == reports["trained"]["concepts"]


def test_bootstrap_interval_is_basic_and_corrects_the_bars_upward_bias():
    """Latents right on every token keep their precision under any reweighting: the interval collapses on the
    estimate. Latents just below the 0.9 bar pass on some reweightings, never the other way: the resamples sit above
    the estimate, and the basic interval (and the bias-corrected estimate) below it."""
    from difflens.interpret.truth import bootstrap_shares

    rng = np.random.default_rng(0)
    I, F = 40, 50
    fires = np.zeros((I, F))
    for f in range(F):
        fires[rng.choice(I, 10, replace=False), f] = 1.0
    exact = {"alive": np.ones(F, bool), "found": np.ones(F, bool), "upper_fires": fires.sum(0),
             "precise_concept": np.zeros(F, int), "concept": np.zeros(F, int), "f1": np.zeros(F),
             "images": {"upper": (fires, fires.copy()), "f1": (fires, np.zeros((I, F)))}}
    exact["precise"] = np.ones(F, bool)
    pos = np.full((I, 1), 10.0)  # base rate 10 / 256 tokens
    out = bootstrap_shares(exact, pos, 256, 100, seed=0)
    assert out["precise_share"] == [1.0, 1.0] and out["precise_share_bias_corrected"] == 1.0
    near = dict(exact, precise=np.zeros(F, bool))
    tp = fires.copy()
    for f in range(F):  # 8 of 10 firings right: precision 0.8, below the bar
        tp[np.flatnonzero(fires[:, f])[:2], f] = 0.0
    near["images"] = {"upper": (fires, tp), "f1": exact["images"]["f1"]}
    out = bootstrap_shares(near, pos, 256, 200, seed=0)
    lo, hi = out["precise_share"]
    assert lo == 0.0 and hi == 0.0 and out["precise_share_bias_corrected"] == 0.0  # clipped at 0 below the estimate


def test_latent_ranges_give_the_same_report_as_one_range(tmp_path, monkeypatch):
    from difflens.interpret import truth_stats

    store = make_world_store(tmp_path, split=True)
    whole = truth_report(_planted_dictionary(), store, sparse_sizes=(), bootstrap=30)
    assert len(truth_stats.latent_ranges(DIM, len(whole["concepts"]))) == 1
    monkeypatch.setattr(truth_stats, "HIST_BUDGET_BYTES", 7 * truth_stats.LEVELS * len(whole["concepts"]) * 4 * 13)
    assert len(truth_stats.latent_ranges(DIM, len(whole["concepts"]))) == 10  # 7 latents a range
    split = truth_report(_planted_dictionary(), store, sparse_sizes=(), bootstrap=30)
    assert json.dumps(write_truth(split, tmp_path / "a.json").read_text()) == \
        json.dumps(write_truth(whole, tmp_path / "b.json").read_text())


def test_a_latent_counts_only_when_precise_on_train_too():
    """Four upper-range train firings (below the 5 the train rule asks) that are all red, then five held-out ones
    that are all red: precise on held-out images alone, so it does not count."""
    from difflens.interpret.truth_stats import LatentConceptStats

    def batch(n_red: int, n: int = 64):
        vals = torch.zeros(n, 1)
        vals[:n_red, 0] = 1.0
        labels = torch.zeros(n, 2, dtype=torch.bool)
        labels[:n_red, 0] = True  # concept 0: red (specific); concept 1: never
        labels[n_red:, 1] = True
        return SparseCodes(vals, torch.zeros(n, 1, dtype=torch.long)), labels

    for train_red, counts in ((4, False), (5, True)):
        s = LatentConceptStats(torch.ones(1), 2, torch.tensor([True, True]))
        s.add(*batch(train_red))
        s.choose()
        s.start_heldout(1)
        codes, labels = batch(5)
        s.add(codes, labels, torch.zeros(64, dtype=torch.long))
        r = s.result(np.array([[5.0, 59.0]]))
        assert r["upper_precision"][0] == 1.0 and bool(r["precise"][0]) is counts, train_red


def test_the_untrained_control_is_the_sae_at_its_initialisation(tmp_path):
    import difflens as dl
    from difflens.interpret.truth import initial_dictionary

    store = make_world_store(tmp_path, split=True)
    sae = dl.train_sae(store, SITE, 0, k=4, num_latents=32, num_tokens=4_000, batch_size=256, normalization="none",
                       seed=3, progress=False)
    center = torch.randn(DIM)
    init = initial_dictionary(sae, center)
    fresh = type(sae)(DIM, sae.cfg, seed=3)
    assert torch.equal(init.W_dec, fresh.W_dec) and torch.equal(init.W_enc, fresh.W_enc)
    assert torch.equal(init.b_dec, center) and not torch.equal(init.W_dec, sae.W_dec)
    # tied unit rows, no encoder bias: the untrained SAE is random directions drawn with its seed, centred alike
    x = torch.randn(100, DIM) + 2
    same = RandomDirections(DIM, 32, 4, seed=3, center_D=center)
    a, b = init.encode(x), same.encode(x)
    assert torch.equal(a.indices.sort(-1).values, b.indices.sort(-1).values)
    assert initial_dictionary(_planted_dictionary()) is None  # neurons have no initialisation


def test_ground_truth_refuses_a_store_of_another_world(tmp_path):
    """A real model's store of free prompts: no labels, no truth report, and the error says what to use instead."""
    store = make_world_store(tmp_path / "world")
    token_labels(store)  # a synthetic store of shapes-world captions is labelled
    w = StoreWriter(tmp_path / "flux", dtype="float16")
    prompts = ["a cat on a mat", "a red circle in the center on a white background"]
    w.prepare({"model": "flux-tiny"}, [{"image_id": i, "prompt": p, "seed": i} for i, p in enumerate(prompts)])
    images = np.stack([store.load_image(0), store.load_image(1)])
    w.write_chunk(0, [0, 1], images, {(SITE, 0): ChunkRows(torch.randn(512, DIM), np.repeat([0, 1], 256),
                                                          np.tile(np.arange(256), 2))})
    w.finalize([EntrySpec(SITE, 0, DIM, "image", 256, GRID)], 1, {"model": "flux-tiny", "n_images": 2,
                                                                  "prompts_hash": "f"}, holdout=0.5)
    flux = ActivationStore.open(tmp_path / "flux")
    for call in (lambda: token_labels(flux), lambda: truth_report(_planted_dictionary(), flux)):
        with pytest.raises(ValueError, match=r"'a cat on a mat'.*--backend openai.*RIEBench"):
            call()


def test_write_truth_refuses_another_dictionarys_report_unless_overwrite(tmp_path, capsys):
    import pytest

    from difflens.interpret.truth import write_truth

    report = {"dictionary": "sae_pca", "kind": "sae", "num_latents": 8, "k": 2, "site": "s", "step": 0,
              "summary": {"dictionary": {}, "random": {}}, "value": 1.0}
    path = write_truth(report, tmp_path / "truth.json")
    write_truth({**report, "value": 2.0}, path)  # the same dictionary and controls: rewritten
    with pytest.raises(ValueError, match="ground-truth report of a different job \\(dictionary: saved 'sae_pca', now 'itda'"):
        write_truth({**report, "dictionary": "itda"}, path)
    write_truth({**report, "dictionary": "itda"}, path, overwrite=True)
    assert "replacing a ground-truth report" in capsys.readouterr().err
    assert json.loads(path.read_text())["dictionary"] == "itda"


def test_a_dictionary_across_steps_is_reported_at_one_step_with_that_steps_normaliser(tmp_path):
    import difflens as dl
    from difflens.dictionaries.normalization import StepNormalizers

    store = make_world_store(tmp_path / "s", split=True, steps=(0, 1))  # step 1 = 2 x step 0
    sae = dl.train_sae(store, SITE, [0, 1], k=4, num_latents=32, num_tokens=20_000, batch_size=256, lr=3e-3,
                       normalization="pca", step_normalization="per-step", seed=0, progress=False)
    with pytest.raises(ValueError, match="pass step"):
        sae.encode(torch.zeros(1, DIM))
    at = {t: truth_report(sae, store, step=t, sparse_sizes=(), bootstrap=0) for t in (0, 1)}
    assert isinstance(sae.normalizer, StepNormalizers)  # the report read a view; the dictionary is unchanged
    # each step whitened by its own statistics: step 1's inputs become step 0's, and so do the reports
    assert at[1]["step"] == 1 and at[0]["step"] == 0
    for control in ("dictionary", "random", "init"):
        for m in ("precise_share", "mean_f1", "mean_union_f1"):
            assert at[1]["summary"][control][m] == pytest.approx(at[0]["summary"][control][m], abs=1e-3), (control, m)
    assert at[1]["summary"]["dictionary"]["precise_share"] > at[1]["summary"]["init"]["precise_share"]


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "matryoshka"])
def test_the_untrained_control_of_a_family_is_that_family_at_initialisation_with_its_l0(tmp_path, arch):
    import difflens as dl
    from difflens.interpret.truth import initial_dictionary

    store = make_world_store(tmp_path, split=True)
    sae = dl.train_sae(store, SITE, 0, arch=arch, k=4, num_latents=32, num_tokens=2_000, batch_size=256,
                       normalization="none", seed=3, progress=False)
    rows = torch.randn(512, DIM) + 2
    center = rows.mean(0)
    init = initial_dictionary(sae, center, rows)
    fresh = type(sae)(DIM, sae.cfg, seed=3)
    assert type(init) is type(sae) and torch.equal(init.W_enc, fresh.W_enc) and torch.equal(init.b_dec, center)
    assert float(init.encode(rows).l0().float().mean()) == pytest.approx(4, rel=0.05)  # the family's L0, k
    # without rows to set it, the threshold stays at its start: far more than k latents fire
    assert float(initial_dictionary(sae, center).encode(rows).l0().float().mean()) > 8
