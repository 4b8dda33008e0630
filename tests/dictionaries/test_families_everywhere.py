"""Each SAE family goes everywhere a TopK SAE goes: trained tiny on a tiny embedded-model store, it is indexed,
carded, explained by the oracle, measured on the ground truth, steered and browsed. And a dictionary across steps
with one normaliser per step: indexed and steered with each step's normaliser, refused clearly at other steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.adapters import Capture
from difflens.interpret.truth import truth_report

from runs import IMG, PROMPTS, SMALL, tiny_store

FAMILIES = {"batchtopk": {}, "matryoshka": {"prefixes": (0.25, 1.0)}, "jumprelu": {}}
INDEX = dict(top_n=6, samples=12, quantile_bins=3, batch_images=8)
_trained: dict = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model, run folder): a store of 16 images at steps 0, 1, 2 of 3 (image site only) inside a run folder."""
    run = tmp_path_factory.mktemp("everywhere") / "run"
    model, _ = tiny_store(run / "store", sites=(IMG,), steps=(0, 1, 2))
    return model, run


def family(world, arch: str):
    """(dictionary, its index) of ``arch`` trained at step 1 in the run's dictionaries/<arch>, indexed at every step."""
    if arch not in _trained:
        folder = world[1] / "dictionaries" / arch
        dl.train_sae(world[1] / "store", IMG, 1, out=folder, arch=arch, **{**SMALL, **FAMILIES[arch]})
        sae = dl.load_dictionary(folder)
        _trained[arch] = sae, dl.feature_index(sae, steps="all", out=folder / "index", **INDEX)
    return _trained[arch]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_a_family_is_indexed_carded_explained_measured_and_steered(world, arch, tmp_path):
    model, run = world
    sae, index = family(world, arch)
    assert sae.cfg.arch == arch and index.steps == [0, 1, 2]
    assert (index.prefix_sizes == [12, 48]) if arch == "matryoshka" else index.prefix_sizes is None
    alive = torch.nonzero(index.alive()).squeeze(1).tolist()
    assert len(alive) >= 2
    latent = int(index.max_activation.argmax())
    top = index.top_images(latent)[0]
    assert float(index.activation_map(latent, top["image_id"], top["step"]).max()) == pytest.approx(top["score"],
                                                                                                     rel=1e-4)
    # steering reads one latent without a full encode: it must be the family's inference code
    acts = dl.open_store(run / "store").reader(IMG, 1).read_rows(torch.arange(256))
    torch.testing.assert_close(sae.latent_activation(acts, latent), sae.encode(acts).to_dense(sae.num_latents)[:, latent])
    assert dl.feature_card(index, latent, tmp_path / "card.png").stat().st_size > 1000
    explained = dl.autointerp(index, out=tmp_path / "ai", features=f"{alive[0]},{alive[1]}", explain_images=4,
                              test_positives=4, negatives_random=2, negatives_other=2)["features"]
    assert [explained[str(i)]["status"] for i in alive[:2]] == ["ok", "ok"]
    truth = truth_report(sae, controls=("random",), sparse_sizes=(), bootstrap=10, max_probe_tokens=1024)
    assert truth["num_latents"] == sae.num_latents and set(truth["summary"]) == {"dictionary", "random"}
    assert 2 <= truth["alive"] <= sae.num_latents
    out = dl.steer(model, sae, [dl.Edit(latent, "add", 8.0, unit="raw"), dl.Edit(latent, "ablate")], PROMPTS[:2],
                   num_steps=3)
    assert not np.array_equal(out.images[0], out.baseline)
    assert out.records[1][0]["edited_token_steps"] >= 0


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_a_family_is_browsed(world, arch):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from difflens.browser.app import create_app

    _, index = family(world, arch)
    latent = int(index.max_activation.argmax())
    with TestClient(create_app(world[1]), raise_server_exceptions=False) as client:
        table = client.get(f"/d/{arch}?per_page=500")
        assert table.status_code == 200 and f'href="/d/{arch}/f/{latent}"' in table.text
        page = client.get(f"/d/{arch}/f/{latent}")
        assert page.status_code == 200 and f"/overlay/{arch}/{latent}/" in page.text
        assert ("Matryoshka prefix level" in page.text) == (arch == "matryoshka")
        top = index.top_images(latent)[0]
        assert client.get(f"/overlay/{arch}/{latent}/{top['image_id']}/{top['step']}.png").status_code == 200


def test_a_dictionary_with_a_normaliser_per_step_is_indexed_and_steered_at_its_steps(world):
    model, run = world
    store = dl.open_store(run / "store")
    folder = run / "dictionaries" / "per_step"
    dl.train_sae(store, IMG, [0, 1], out=folder, step_normalization="per-step",
                 **{**SMALL, "normalization": "standardise"})
    sae = dl.load_dictionary(folder)
    index = dl.feature_index(sae, out=folder / "index", **INDEX)  # its own steps: both
    assert index.steps == [0, 1]
    for j, step in enumerate(index.steps):  # each step's rows are encoded with that step's normaliser
        reader = store.reader(IMG, step)
        acts = reader.read_rows(torch.arange(reader.num_rows))
        dense = sae.encode(acts, step=step).to_dense(sae.num_latents)
        torch.testing.assert_close(index.tensors["max"][j], dense.max(0).values.clamp_min(0), rtol=1e-4, atol=1e-5)
        other = sae.encode(acts, step=1 - step).to_dense(sae.num_latents)
        assert not torch.allclose(dense, other)
    with pytest.raises(ValueError, match=r"per-step.*indexed at those steps only, not at \[2\]"):
        dl.feature_index(sae, steps="all", **INDEX)
    with pytest.raises(ValueError, match=r"per-step.*steered .*not at \[2\]"):
        dl.steer(model, sae, dl.Edit(0, "add", 1.0, unit="raw"), PROMPTS[:1], num_steps=3)
    # an edit at one step moves the site along that step's residual direction
    latent = int(index.max_activation.argmax())
    for step in (0, 1):
        got: dict = {"base": {}, "steered": {}}
        original = model.generate

        def generate(*args, **kwargs):  # steer() takes no capture: record the site in both of its generations
            kind = "steered" if kwargs.get("interventions") else "base"
            grab = Capture([IMG], lambda _n, s, x, kind=kind: got[kind].__setitem__(s, x.clone()))
            return original(*args, **{**kwargs, "capture": grab})

        model.generate = generate
        try:
            out = dl.steer(model, sae, dl.Edit(latent, "add", 3.0, unit="raw", steps=[step]), PROMPTS[:1], num_steps=3)
        finally:
            del model.generate
        assert out.records[0][0]["amount"] == 3.0
        change_TD = (got["steered"][step] - got["base"][step])[0]
        want_D = 3.0 * sae.residual_directions(step=step)[latent]
        torch.testing.assert_close(change_TD, want_D.expand_as(change_TD), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(sae.residual_directions(step=0)[latent], sae.residual_directions(step=1)[latent])
    # the browser reads each step's codes with that step's normaliser
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from difflens.browser.app import create_app

    with TestClient(create_app(run), raise_server_exceptions=False) as client:
        assert client.get(f"/d/per_step/f/{latent}").status_code == 200
        tops = index.top_images(latent)
        for top in [next(t for t in tops if t["step"] == step) for step in {t["step"] for t in tops}]:
            amap = client.get(f"/api/map/per_step/{latent}/{top['image_id']}/{top['step']}").json()
            assert max(amap["values"]) == pytest.approx(top["score"], rel=1e-3)
        assert {t["step"] for t in tops} == {0, 1}
