"""Sparse autograd kernels for TopK dictionaries.

A TopK SAE keeps k ≪ d latents per token, so both the encoder's weight gradient and the decoder
only involve B·k (token, latent) pairs. These Functions never build a dense (batch × latents)
gradient and never decode densely:

* ``topk_encode``: forward is one dense matmul (unavoidable: every latent is scored) followed by
  top-k; backward uses only the k selected columns per token (``grad_W_enc = Sᵀ x`` with S the
  sparse B×d matrix of kept gradients), and the gradient w.r.t. the centring bias collapses to
  ``-grad_b_enc @ W_enc`` so no B×n input gradient is formed unless the input itself needs one.
* ``sparse_decode``: ``y_BD = Σ_j vals_BK[:, j] · W_dec[idx_BK[:, j]]`` via ``embedding_bag``;
  backward computes ``grad_vals`` as a sampled matmul at the B·K pairs only and scatters ``Sᵀ grad_y`` into
  the touched decoder rows.

Shapes (the package's alphabet): B tokens, D input width, F latents, K active latents per token.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor



def _csr(crow: Tensor, col: Tensor, vals: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, vals, size=size, check_invariants=False)

_WORKSPACE: dict[tuple, Tensor] = {}


def _cpu_workspace(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """A reused buffer for the (B × F) pre-activations of training steps on CPU, else None (a fresh tensor).

    Each step's B×F scores are only needed until top-k has run. On CPU a fresh buffer of that size
    is new memory from the kernel every step, and its page faults cost ~5 % of a training step;
    GPU caching allocators already reuse memory.
    """
    if device.type != "cpu":
        return None
    key = (shape, dtype)
    if key not in _WORKSPACE:
        _WORKSPACE.clear()  # keep one buffer: the shapes of a training run do not change
        _WORKSPACE[key] = torch.empty(shape, dtype=dtype)
    return _WORKSPACE[key]


def sparse_transpose_matmul(idx_BK: Tensor, vals_BK: Tensor, rhs_BD: Tensor, num_latents: int) -> Tensor:
    """Return ``Sᵀ rhs`` (F × D) where S (B × F) holds ``vals`` at ``idx``; never forms S densely.

    Uses a CSR sparse matrix (latent-major) so the product is one sparse-dense matmul.
    """
    B, K = idx_BK.shape
    flat_idx = idx_BK.reshape(-1)
    # int32 keys: markedly faster (and less sensitive to CPU contention) than sorting int64.
    rows_sorted, order = torch.sort(flat_idx.int(), stable=True)
    rows_sorted = rows_sorted.long()
    tokens_sorted = torch.div(order, K, rounding_mode="floor")
    counts = torch.bincount(rows_sorted, minlength=num_latents)
    crow = torch.zeros(num_latents + 1, dtype=torch.int64, device=idx_BK.device)
    torch.cumsum(counts, 0, out=crow[1:])
    vals = vals_BK.reshape(-1)[order].to(rhs_BD.dtype)
    if rhs_BD.device.type == "cpu":
        S_T = _csr(crow, tokens_sorted, vals, (num_latents, B))
        return S_T @ rhs_BD
    # On GPU index_add_ with atomics is fast and avoids cuSPARSE set-up cost.
    out = torch.zeros(num_latents, rhs_BD.shape[1], dtype=rhs_BD.dtype, device=rhs_BD.device)
    out.index_add_(0, rows_sorted, rhs_BD[tokens_sorted] * vals[:, None])
    return out


def gather_dot(idx_BK: Tensor, table_FD: Tensor, rhs_BD: Tensor) -> Tensor:
    """``out[b, j] = <table[idx[b, j]], rhs[b]>``: (rhs @ tableᵀ) sampled at the B·K positions only."""
    B, K = idx_BK.shape
    crow = torch.arange(0, B * K + 1, K, device=idx_BK.device)
    mask = _csr(crow, idx_BK.reshape(-1), rhs_BD.new_zeros(B * K), (B, table_FD.shape[0]))
    table = table_FD.to(rhs_BD.dtype)
    return torch.sparse.sampled_addmm(mask, rhs_BD, table.t(), beta=0.0).values().reshape(B, K)


class TopKEncode(torch.autograd.Function):
    """codes = ReLU(TopK(W_enc (x − b_dec) + b_enc)), optionally with an AuxK head over dead latents."""

    @staticmethod
    def forward(ctx, x_BD, b_dec_D, W_enc_FD, b_enc_F, k: int, dead_idx: Tensor | None, k_aux: int,
                reuse_buffer: bool):
        xc_BD = x_BD - b_dec_D
        dev = x_BD.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xc_BD.dtype
        pre_BF = torch.addmm(b_enc_F.to(dt), xc_BD.to(dt), W_enc_FD.t().to(dt),
                             out=_cpu_workspace((x_BD.shape[0], W_enc_FD.shape[0]), dt, x_BD.device) if reuse_buffer else None)
        vals_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
        vals_BK = vals_BK.float().relu_()
        if dead_idx is not None and dead_idx.numel() > 0 and k_aux > 0:
            ka = min(k_aux, dead_idx.numel())
            aux_vals, aux_pos = pre_BF.index_select(1, dead_idx).topk(ka, dim=-1, sorted=False)
            aux_vals, aux_idx = aux_vals.float().relu_(), dead_idx[aux_pos]
        else:
            aux_vals = vals_BK.new_zeros(x_BD.shape[0], 0)
            aux_idx = idx_BK.new_zeros(x_BD.shape[0], 0)
        del pre_BF
        ctx.save_for_backward(xc_BD, W_enc_FD, idx_BK, vals_BK, aux_idx, aux_vals)
        ctx.mark_non_differentiable(idx_BK, aux_idx)
        return vals_BK, idx_BK, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        xc_BD, W_enc_FD, idx_BK, vals_BK, aux_idx, aux_vals = ctx.saved_tensors
        n_latents = W_enc_FD.shape[0]
        # ReLU mask; join main and auxiliary heads into one sparse gradient matrix.
        g = torch.where(vals_BK > 0, g_vals.float(), 0.0) if g_vals is not None else torch.zeros_like(vals_BK)
        idx = idx_BK
        if aux_idx.shape[1] > 0 and g_aux is not None:
            g = torch.cat([g, torch.where(aux_vals > 0, g_aux.float(), 0.0)], 1)
            idx = torch.cat([idx_BK, aux_idx], 1)
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        need_x, need_bdec, need_W, need_benc = ctx.needs_input_grad[:4]
        if need_benc or need_bdec:
            grad_b_enc = torch.zeros(n_latents, dtype=torch.float32, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        if need_W:
            grad_W = sparse_transpose_matmul(idx, g, xc_BD.float(), n_latents).to(W_enc_FD.dtype)
        if need_x:
            grad_x = F.embedding_bag(idx, W_enc_FD.float(), per_sample_weights=g, mode="sum")
        if need_bdec:
            grad_b_dec = -(grad_b_enc @ W_enc_FD.float())
        if not need_benc:
            grad_b_enc = None
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """y_BD = Σ_j vals_BK[:, j] · W_dec_FD[idx_BK[:, j]] (no bias)."""

    @staticmethod
    def forward(ctx, vals_BK, idx_BK, W_dec_FD):
        y = F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=vals_BK.to(W_dec_FD.dtype), mode="sum")
        ctx.save_for_backward(vals_BK, idx_BK, W_dec_FD)
        return y

    @staticmethod
    def backward(ctx, g_y_BD):
        vals_BK, idx_BK, W_dec_FD = ctx.saved_tensors
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:
            g_vals = gather_dot(idx_BK, W_dec_FD, g_y_BD).to(vals_BK.dtype)
        if ctx.needs_input_grad[2]:
            g_W = sparse_transpose_matmul(idx_BK, vals_BK.float(), g_y_BD.float(), W_dec_FD.shape[0]).to(W_dec_FD.dtype)
        return g_vals, None, g_W


def topk_encode(x_BD, b_dec_D, W_enc_FD, b_enc_F, k, dead_idx=None, k_aux=0, reuse_buffer=False):
    """Return (vals_BK, idx_BK, aux_vals_BA, aux_idx_BA); see :class:`TopKEncode`.

    reuse_buffer: score into one CPU buffer kept across calls (training, where the batch shape is fixed).
    """
    return TopKEncode.apply(x_BD, b_dec_D, W_enc_FD, b_enc_F, k, dead_idx, k_aux, reuse_buffer)


def sparse_decode(vals_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor) -> Tensor:
    """Return y_BD = codes @ W_dec without materialising the dense codes; see :class:`SparseDecode`."""
    return SparseDecode.apply(vals_BK, idx_BK, W_dec_FD)
