"""sae-lens export: file layout, folded weights reproduce difflens, sae-lens loads them, refusals."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from difflens.dictionaries import ITDA, ITDAConfig, NeuronBasis, Normalizer, SAEConfig, TopKSAE
from difflens.dictionaries.saelens import CFG_FILE, WEIGHTS_FILE, export_saelens

N, D, K = 12, 40, 5


def _aniso(n_tokens=3000, seed=0):
    """Anisotropic, off-centre activations (variances spanning six decades), like a residual stream."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(N, N, generator=g))
    return (torch.randn(n_tokens, N, generator=g) * torch.logspace(0, 3, N)) @ basis.T + 50.0


def _sae(kind="pca", seed=0):
    x = _aniso(seed=seed)
    sae = TopKSAE(N, SAEConfig(num_latents=D, k=K), normalizer=Normalizer.fit(x.split(1000), N, kind), seed=seed)
    with torch.no_grad():  # move off the initialisation: biases and an encoder that is not W_decᵀ
        g = torch.Generator().manual_seed(seed + 1)
        sae.b_enc.normal_(0, 0.3, generator=g)
        sae.b_dec.normal_(0, 0.3, generator=g)
        sae.W_enc.add_(torch.randn(sae.W_enc.shape, generator=g) * 0.2)
    return sae, x[:256]


def _close(got, want, rel=1e-4):
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


def _apply_saelens_formula(t, x, k):
    """sae-lens's topk encode/decode, written out: ReLU(TopK((x − b_dec) W_enc + b_enc)) W_dec + b_dec."""
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    vals, idx = pre.topk(k, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return codes @ t["W_dec"] + t["b_dec"], codes


def test_layout_and_folded_weights(tmp_path):
    sae, x = _sae("pca")
    out = export_saelens(sae, tmp_path / "exp", hook_name="transformer_blocks.3", metadata={"model_name": "tiny-flux"})
    assert sorted(p.name for p in out.iterdir()) == sorted([CFG_FILE, WEIGHTS_FILE])  # no temporaries left
    cfg = json.loads((out / CFG_FILE).read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (N, D, K)
    assert cfg["dtype"] == "float32" and cfg["normalize_activations"] == "none"
    assert cfg["apply_b_dec_to_input"] is True and cfg["rescale_acts_by_decoder_norm"] is False
    meta = cfg["metadata"]
    assert meta["hook_name"] == "transformer_blocks.3" and meta["model_name"] == "tiny-flux"
    assert meta["sae_lens_version"].split(".")[0] == "6" and meta["difflens_folded_normalization"] == "pca"

    t = load_file(str(out / WEIGHTS_FILE))
    assert {k: tuple(v.shape) for k, v in t.items()} == {"W_enc": (N, D), "b_enc": (D,), "W_dec": (D, N), "b_dec": (N,)}
    assert all(v.dtype == torch.float32 for v in t.values())
    assert not torch.allclose(t["W_dec"].norm(dim=1), torch.ones(D))  # whitening folded in: rows not unit norm

    ours, codes = sae.reconstruct(x)
    theirs, their_codes = _apply_saelens_formula(t, x, K)
    _close(theirs, ours)
    _close(their_codes, codes.to_dense(D))


def test_export_leaves_sae_untouched(tmp_path):
    sae, x = _sae("pca")
    before = sae.reconstruct(x)[0]
    export_saelens(sae, tmp_path / "exp")
    assert sae.normalizer.rotation.dtype == torch.float32 and sae.W_enc.dtype == torch.float32
    torch.testing.assert_close(sae.reconstruct(x)[0], before)


@pytest.mark.parametrize("kind", ["none", "standardise", "pca"])
def test_saelens_loads_and_reproduces(tmp_path, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae_lens = pytest.importorskip("sae_lens")
    sae, x = _sae(kind)
    export_saelens(sae, tmp_path / "exp", hook_name="transformer_blocks.3")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "exp")
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == K
    assert theirs.cfg.metadata.hook_name == "transformer_blocks.3"
    ours, codes = sae.reconstruct(x)
    with torch.no_grad():
        their_codes = theirs.encode(x)
        _close(theirs.decode(their_codes), ours)
        _close(theirs(x), ours)
    _close(their_codes, codes.to_dense(D))


def test_refuses_other_dictionaries(tmp_path):
    x = _aniso()
    itda = ITDA(N, ITDAConfig(k=4, normalization="none"))
    itda.add_atoms(x[:10], {"row_id": torch.arange(10), "image_id": torch.arange(10), "token_row": torch.arange(10)})
    with pytest.raises(ValueError, match="TopK SAE.*ITDA"):
        export_saelens(itda, tmp_path / "itda")
    with pytest.raises(ValueError, match="TopK SAE"):
        export_saelens(NeuronBasis(N, k=3), tmp_path / "neurons")
    assert not (tmp_path / "itda").exists()
