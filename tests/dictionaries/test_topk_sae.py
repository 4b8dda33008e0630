"""TopK SAE: exact top-k, sparse kernels vs dense autograd, decoder norm, AuxK locality."""

import pytest
import torch

from difflens.dictionaries import SAEConfig, TopKSAE
from difflens.dictionaries.sparse_ops import sparse_decode, topk_encode


def _sae(n=16, d=64, k=4, seed=0):
    sae = TopKSAE(n, SAEConfig(num_latents=d, k=k, normalization="none"), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return sae


def test_topk_exact():
    sae = _sae()
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    codes = sae.encode(x)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    ref_vals, ref_idx = pre.topk(4, dim=-1)
    got = codes.to_dense(64)
    ref = torch.zeros_like(pre).scatter(1, ref_idx, ref_vals.relu())
    torch.testing.assert_close(got, ref)
    assert (codes.l0() <= 4).all() and (codes.values >= 0).all()


@pytest.mark.parametrize("batch", [False, True])
def test_sparse_kernels_match_dense_autograd(batch):
    """TopK, and BatchTopK (padded codes, one loud token keeping many latents) through the padded-code backward."""
    torch.manual_seed(0)
    B, N, D, K = 24, 8, 40, 5
    x = torch.randn(B, N)
    x[0] *= 4
    x.requires_grad_()
    W_enc = torch.randn(D, N, requires_grad=True)
    b_enc = torch.randn(D, requires_grad=True)
    W_dec = torch.randn(D, N, requires_grad=True)
    b_dec = torch.randn(N, requires_grad=True)
    dead = torch.tensor([1, 3, 7, 20, 33])
    target = torch.randn(B, N)

    vals, idx, aux_vals, aux_idx = topk_encode(x, b_dec, W_enc, b_enc, K, dead, 3, batch=batch)
    assert not batch or idx.shape[1] > 2 * K
    y = sparse_decode(vals, idx, W_dec) + b_dec
    aux = sparse_decode(aux_vals, aux_idx, W_dec)
    loss = (y - target).pow(2).sum() + (aux - target).pow(2).sum()
    grads = torch.autograd.grad(loss, [W_enc, b_enc, W_dec, b_dec, x])

    params = [p.detach().clone().requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec, x)]
    We, be, Wd, bd, xr = params
    pre = (xr - bd) @ We.T + be
    if batch:
        mask = torch.zeros(B * D, dtype=torch.bool).scatter(0, pre.reshape(-1).topk(B * K).indices, True).reshape(B, D)
    else:
        mask = torch.zeros(B, D, dtype=torch.bool).scatter(1, pre.topk(K, -1).indices, True)
    codes = torch.where(mask, pre.relu(), 0.0)
    dead_mask = torch.zeros(D, dtype=torch.bool)
    dead_mask[dead] = True
    pre_dead = pre.masked_fill(~dead_mask, float("-inf"))
    amask = torch.zeros(B, D, dtype=torch.bool).scatter(1, pre_dead.topk(3, -1).indices, True)
    acodes = torch.where(amask, pre.relu(), 0.0)
    ref_loss = (codes @ Wd + bd - target).pow(2).sum() + (acodes @ Wd - target).pow(2).sum()
    ref_grads = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_input_gradient_when_requested():
    torch.manual_seed(1)
    x = torch.randn(6, 8, requires_grad=True)
    W = torch.randn(20, 8)
    vals, idx, _, _ = topk_encode(x, torch.zeros(8), W, torch.zeros(20), 3)
    (gx,) = torch.autograd.grad(vals.sum(), [x])
    x2 = x.detach().clone().requires_grad_()
    pre = x2 @ W.T
    ref = torch.zeros_like(pre).scatter(1, pre.topk(3, -1).indices, 1.0) * pre.relu()
    (gr,) = torch.autograd.grad(ref.sum(), [x2])
    torch.testing.assert_close(gx, gr)


def test_decoder_norm_invariant_after_steps():
    from difflens.dictionaries.train import SAEState, SAETrainConfig

    sae = _sae()
    state = SAEState.create(sae, SAETrainConfig(lr=1e-2, warmup_steps=1, k_aux=0))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    for _ in range(5):
        state.train_step(x, total_variance=(x - x.mean(0)).pow(2).sum())
        norms = sae.W_dec.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_parallel_gradient_removed():
    sae = _sae()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert dots.abs().max() < 1e-5


def test_auxk_touches_only_dead_latents():
    sae = _sae(d=64, k=4)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))
    dead = torch.tensor([0, 5, 9, 17, 40, 63])
    out = sae.forward_train(x, dead_idx=dead, k_aux=3)
    resid = (x - out.recon_BD).detach()
    from difflens.dictionaries.sparse_ops import sparse_decode as dec

    aux_loss = (dec(out.aux_values_BA, out.aux_indices_BA, sae.W_dec) - resid).pow(2).sum()
    aux_loss.backward()
    touched_enc = sae.W_enc.grad.abs().sum(1) > 0
    touched_dec = sae.W_dec.grad.abs().sum(1) > 0
    dead_mask = torch.zeros(64, dtype=torch.bool)
    dead_mask[dead] = True
    assert touched_enc.any() and touched_dec.any()
    assert not (touched_enc & ~dead_mask).any()
    assert not (touched_dec & ~dead_mask).any()
    assert set(out.aux_indices_BA.unique().tolist()) <= set(dead.tolist())


def test_width_mismatch_and_nan_errors():
    import pytest

    sae = _sae()
    with pytest.raises(ValueError, match="width 15"):
        sae.encode(torch.randn(4, 15))
    bad = torch.randn(4, 16)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        sae.encode(bad)


def test_reused_score_buffer_leaves_earlier_results_intact():
    """Training scores into one reused CPU buffer; codes of an earlier batch must not change."""
    gen = torch.Generator().manual_seed(4)
    W, b_enc, b_dec = torch.randn(40, 8, generator=gen), torch.randn(40, generator=gen), torch.randn(8, generator=gen)
    x1, x2 = torch.randn(12, 8, generator=gen), torch.randn(12, 8, generator=gen)
    ref1 = topk_encode(x1, b_dec, W, b_enc, 5)
    got1 = topk_encode(x1, b_dec, W, b_enc, 5, reuse_buffer=True)
    got2 = topk_encode(x2, b_dec, W, b_enc, 5, reuse_buffer=True)
    for ref, got in zip(ref1[:2], got1[:2]):
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got2[0], topk_encode(x2, b_dec, W, b_enc, 5)[0])


def test_clip_grad_norm_matches_torch():
    from difflens.dictionaries.train.sae import clip_grad_norm

    for max_norm in (0.5, 1e3):  # clipping, and the no-op case
        gen = torch.Generator().manual_seed(5)
        ours = [torch.nn.Parameter(torch.randn(7, 3, generator=gen)) for _ in range(3)]
        ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        for p, r in zip(ours, ref):
            p.grad = torch.randn(7, 3, generator=gen)
            r.grad = p.grad.clone()
        norm = clip_grad_norm(ours, max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        assert abs(norm - float(ref_norm)) < 1e-5
        for p, r in zip(ours, ref):
            torch.testing.assert_close(p.grad, r.grad)
