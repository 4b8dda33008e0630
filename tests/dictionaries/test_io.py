"""Dictionary files: round trips, sparsify compatibility, folded export, no pickle."""

import contextlib
import io as _io
import json

import pytest
import torch
from safetensors.torch import load_file

from difflens.dictionaries import (
    ITDA,
    ITDAConfig,
    NeuronBasis,
    Normalizer,
    SAEConfig,
    TopKSAE,
    export_folded,
    load_dictionary,
    save_dictionary,
)


def _data(n=2000, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * torch.logspace(0, 2, dim)) + 3.0


def _sae(norm_kind="none", seed=0):
    x = _data()
    norm = Normalizer.fit([x], 16, norm_kind)
    sae = TopKSAE(16, SAEConfig(num_latents=48, k=5), normalizer=norm, seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        sae.b_enc.normal_(0, 0.3, generator=g)
        sae.b_dec.normal_(0, 0.3, generator=g)
        sae.W_enc.add_(torch.randn(sae.W_enc.shape, generator=g) * 0.1)
    return sae, x


def _sparsify():
    with contextlib.redirect_stdout(_io.StringIO()):  # sparsify prints a notice about Triton
        import sparsify
    return sparsify


@pytest.mark.parametrize("kind", ["none", "pca"])
def test_sae_round_trip(tmp_path, kind):
    sae, x = _sae(kind)
    save_dictionary(sae, tmp_path / "site", meta={"site": "double.1.img.out"})
    back = load_dictionary(tmp_path / "site")
    torch.testing.assert_close(back.reconstruct(x)[0], sae.reconstruct(x)[0])
    assert back.normalizer.kind == kind
    assert set(load_file(str(tmp_path / "site" / "sae.safetensors"))) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    assert json.loads((tmp_path / "site" / "cfg.json").read_text())["difflens_meta"]["site"] == "double.1.img.out"


def test_sparsify_loads_difflens_sae(tmp_path):
    sparsify = _sparsify()
    sae, x = _sae("none")
    save_dictionary(sae, tmp_path / "site")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "site")
    out = theirs(x)
    ours, codes = sae.reconstruct(x)
    torch.testing.assert_close(out.sae_out, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.latent_acts.sort(-1).values, codes.values.sort(-1).values, rtol=1e-5, atol=1e-5)


def test_folded_export_reproduces_whitened_sae_in_sparsify(tmp_path):
    sparsify = _sparsify()
    sae, x = _sae("pca")
    export_folded(sae, tmp_path / "folded")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "folded")
    ours, codes = sae.reconstruct(x)
    out = theirs(x)
    torch.testing.assert_close(out.sae_out, ours, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.latent_acts.sort(-1).values, codes.values.sort(-1).values, rtol=1e-3, atol=1e-3)


def test_itda_and_neurons_round_trip(tmp_path):
    x = _data()
    itda = ITDA(16, ITDAConfig(k=4, normalization="standardise"), normalizer=Normalizer.fit([x], 16, "standardise"))
    z = itda.normalizer.normalize(x[:10])
    itda.add_atoms(z, {"row_id": torch.arange(10), "image_id": torch.arange(10) // 3, "token_row": torch.arange(10) % 4})
    save_dictionary(itda, tmp_path / "itda")
    back = load_dictionary(tmp_path / "itda")
    torch.testing.assert_close(back.atoms, itda.atoms)
    assert back.provenance["image_id"].tolist() == (torch.arange(10) // 3).tolist()
    torch.testing.assert_close(back.reconstruct(x)[0], itda.reconstruct(x)[0])
    save_dictionary(NeuronBasis(16, k=3), tmp_path / "neurons")
    nb = load_dictionary(tmp_path / "neurons")
    assert nb.k == 3 and nb.num_latents == 16


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    sae, _ = _sae("pca")
    save_dictionary(sae, tmp_path / "site")

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load_dictionary(tmp_path / "site")
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        load_dictionary(tmp_path / "nope")
