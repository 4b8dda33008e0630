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

* ``prefix_decode``: Matryoshka's nested-prefix reconstructions from one decode of bags (token, prefix part);
  ``packed_decode``: the one-prefix case, a padded code's decode from its real pairs only (variable-L0 families).

Shapes (the package's alphabet): B tokens, D input width, F latents, K active latents per token; here also
N flattened (token, latent) pairs, G bags of pairs, P prefixes.
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


def sparse_transpose_matmul(idx_BK: Tensor, vals_BK: Tensor, rhs_BD: Tensor, num_latents: int,
                            rows_N: Tensor | None = None) -> Tensor:
    """Return ``Sᵀ rhs`` (F × D) where S (B × F) holds ``vals`` at ``idx``; never forms S densely.

    ``rows_N``: the row of ``rhs`` of each (flattened) pair when it is not the pair's row in ``idx_BK`` (bags,
    see :class:`BagDecode`; then ``idx_BK`` and ``vals_BK`` may be flat (N,)). Uses a CSR sparse matrix
    (latent-major) so the product is one sparse-dense matmul.
    """
    B = rhs_BD.shape[0]
    flat_idx = idx_BK.reshape(-1)
    # int32 keys: markedly faster (and less sensitive to CPU contention) than sorting int64.
    rows_sorted, order = torch.sort(flat_idx.int(), stable=True)
    rows_sorted = rows_sorted.long()
    tokens_sorted = torch.div(order, idx_BK.shape[1], rounding_mode="floor") if rows_N is None else rows_N[order]
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


def gather_dot(idx_BK: Tensor, table_FD: Tensor, rhs_BD: Tensor, crow: Tensor | None = None) -> Tensor:
    """``out[b, j] = <table[idx[b, j]], rhs[b]>``: (rhs @ tableᵀ) sampled at the B·K positions only.

    ``crow``: CSR row starts (B + 1,) of flat (N,) pairs ``idx`` when rows hold different numbers of pairs
    (bags, see :class:`BagDecode`); the result then has ``idx``'s shape."""
    B, N = rhs_BD.shape[0], idx_BK.numel()
    if crow is None:
        crow = torch.arange(0, N + 1, idx_BK.shape[1], device=idx_BK.device)
    mask = _csr(crow, idx_BK.reshape(-1), rhs_BD.new_zeros(N), (B, table_FD.shape[0]))
    table = table_FD.to(rhs_BD.dtype)
    return torch.sparse.sampled_addmm(mask, rhs_BD, table.t(), beta=0.0).values().reshape(idx_BK.shape)


def _scores(x_BD, b_dec_D, W_enc_FD, b_enc_F, reuse_buffer: bool) -> tuple[Tensor, Tensor]:
    """(centred input xc_BD, dense pre-activations pre_BF = W_enc xc + b_enc), in the autocast dtype."""
    xc_BD = x_BD - b_dec_D
    dev = x_BD.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xc_BD.dtype
    pre_BF = torch.addmm(b_enc_F.to(dt), xc_BD.to(dt), W_enc_FD.t().to(dt),
                         out=_cpu_workspace((x_BD.shape[0], W_enc_FD.shape[0]), dt, x_BD.device) if reuse_buffer else None)
    return xc_BD, pre_BF


def _aux_topk(pre_BF: Tensor, dead_idx: Tensor | None, k_aux: int) -> tuple[Tensor, Tensor]:
    """AuxK head: each token's top ``k_aux`` scores among the dead latents (B × 0 when there are none)."""
    B = pre_BF.shape[0]
    if dead_idx is None or dead_idx.numel() == 0 or k_aux <= 0:
        empty_B0 = torch.zeros(B, 0, dtype=torch.long, device=pre_BF.device)
        return empty_B0.float(), empty_B0
    ka = min(k_aux, dead_idx.numel())
    aux_vals, aux_pos = pre_BF.index_select(1, dead_idx).topk(ka, dim=-1, sorted=False)
    return aux_vals.float().relu_(), dead_idx[aux_pos]


def _joined_grads(vals_BK, g_vals, idx_BK, aux_vals, g_aux, aux_idx) -> tuple[Tensor, Tensor]:
    """(gradient, indices) of the kept scores: active codes (value > 0: the ReLU mask; padding is 0) and the
    AuxK head's, joined into one sparse gradient matrix."""
    g = torch.where(vals_BK > 0, g_vals.float(), 0.0) if g_vals is not None else torch.zeros_like(vals_BK)
    if aux_idx.shape[1] > 0 and g_aux is not None:
        return (torch.cat([g, torch.where(aux_vals > 0, g_aux.float(), 0.0)], 1), torch.cat([idx_BK, aux_idx], 1))
    return g, idx_BK


def _encoder_grads(needs: tuple[bool, ...], xc_BD: Tensor, W_enc_FD: Tensor, idx: Tensor, g: Tensor,
                   padded: bool = False) -> tuple:
    """Gradients (x, b_dec, W_enc, b_enc) of an encoder whose kept scores at ``idx`` receive gradient ``g``
    (zero where inactive); only the B·K kept pairs are touched. ``padded``: codes padded to their widest token
    (BatchTopK, JumpReLU), whose K may be many times the mean; then only the pairs of nonzero gradient are
    touched (nnz·D, not B·K·D; one ``nonzero``, which TopK's full rows do not need)."""
    n_latents = W_enc_FD.shape[0]
    grad_x = grad_b_dec = grad_W = grad_b_enc = None
    need_x, need_bdec, need_W, need_benc = needs
    idx_N, g_N, rows_N, starts_B = idx, g, None, None  # full rows: (B, K) as they are
    if padded:
        rows_N, pos_N = (g != 0).nonzero(as_tuple=True)
        idx_N, g_N = idx[rows_N, pos_N], g[rows_N, pos_N]
        counts_B = torch.bincount(rows_N, minlength=g.shape[0])
        starts_B = torch.cumsum(counts_B, 0) - counts_B
    if need_benc or need_bdec:
        grad_b_enc = torch.zeros(n_latents, dtype=torch.float32, device=g.device).index_add_(
            0, idx_N.reshape(-1), g_N.reshape(-1))
    if need_W:
        grad_W = sparse_transpose_matmul(idx_N, g_N, xc_BD.float(), n_latents, rows_N=rows_N).to(W_enc_FD.dtype)
    if need_x:
        grad_x = F.embedding_bag(idx_N, W_enc_FD.float(), starts_B, per_sample_weights=g_N, mode="sum")
    if need_bdec:
        grad_b_dec = -(grad_b_enc @ W_enc_FD.float())
    if not need_benc:
        grad_b_enc = None
    return grad_x, grad_b_dec, grad_W, grad_b_enc


def pad_by_row(rows: Tensor, cols: Tensor, n_rows: int, *per_pair: Tensor) -> tuple[Tensor, ...]:
    """Pack (row, col, value...) pairs into row-major padded (n_rows, K) tensors, K = the most pairs of a row
    (at least 1): ``(idx_BK, *values_BK)``; padding slots hold index 0 and value 0 (inactive, as everywhere
    in difflens' sparse codes). ``rows`` must be sorted (as ``nonzero`` returns them) or is sorted here."""
    if rows.numel() and not bool((rows[1:] >= rows[:-1]).all()):
        rows, order = torch.sort(rows, stable=True)
        cols, per_pair = cols[order], tuple(v[order] for v in per_pair)
    counts = torch.bincount(rows, minlength=n_rows)
    K = max(1, int(counts.max())) if rows.numel() else 1
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    idx_BK = torch.zeros(n_rows, K, dtype=torch.long, device=rows.device)
    idx_BK[rows, pos] = cols
    out = []
    for v in per_pair:
        padded = v.new_zeros(n_rows, K)
        padded[rows, pos] = v
        out.append(padded)
    return (idx_BK, *out)


def batch_topk(pre_BF: Tensor, k: int, hint: float = 0.0, headroom: int = 4) -> tuple[Tensor, Tensor]:
    """BatchTopK selection: the B·k largest scores of the whole batch, as padded (values_BK, indices_BK) with
    K = the most latents any token kept (tokens keep k on average; padding: value 0).

    Exact in every case; how depends on what is known. ``hint`` > 0, a score below the batch's B·k-th (in
    training: a fraction of the running threshold): the scores above it are gathered (one comparison and
    ``nonzero``) and the top B·k taken among them, ~3x faster than a per-token top-k. Otherwise, or when fewer
    than B·k scores pass, each token's top ``headroom``·k candidates are ranked together, which is exact unless
    a token would keep all its candidates; then one top-k runs over all B·F scores.
    """
    B, F = pre_BF.shape
    if hint > 0:
        rows, cols = (pre_BF > hint).nonzero(as_tuple=True)
        if rows.numel() >= B * k:
            vals, pos = pre_BF[rows, cols].topk(B * k, sorted=False)
            idx_BK, vals_BK = pad_by_row(rows[pos], cols[pos], B, vals)
            return vals_BK, idx_BK
    m = min(F, headroom * k)
    cand_vals, cand_idx = pre_BF.topk(m, dim=-1, sorted=True)
    kth = cand_vals.reshape(-1).topk(B * k, sorted=False).values.min()
    keep_Bm = cand_vals >= kth
    if m < F and bool(keep_Bm[:, -1].any()):  # some token may keep more than its candidates: exact path
        vals, flat = pre_BF.reshape(-1).topk(B * k, sorted=False)
        idx_BK, vals_BK = pad_by_row(torch.div(flat, F, rounding_mode="floor"), flat % F, B, vals)
        return vals_BK, idx_BK
    K = max(1, int(keep_Bm.sum(1).max()))  # kept candidates are a prefix of each (sorted) row
    keep_BK = keep_Bm[:, :K]
    return cand_vals[:, :K] * keep_BK, cand_idx[:, :K] * keep_BK


def threshold_codes(pre_BF: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Inference codes of threshold families: pre where pre > threshold (a scalar or per-latent (F,)) and > 0,
    padded to the most active latents of any token in this batch (padding: value 0). A token's code never
    depends on the other tokens of its batch, only the padding width does."""
    active = (pre_BF > threshold) & (pre_BF > 0)
    rows, cols = active.nonzero(as_tuple=True)
    idx_BK, vals_BK = pad_by_row(rows, cols, pre_BF.shape[0], pre_BF[rows, cols].float())
    return vals_BK, idx_BK


class JumpReLUEncode(torch.autograd.Function):
    """JumpReLU codes z = pre · H(pre − θ) (θ per latent, > 0) with straight-through estimators for θ.

    Returns (vals_BK, idx_BK, l0, aux_vals, aux_idx, pairs_BK). The pairs are the active ones *and* those in
    the rectangle window |pre − θ| < ε/2 (value 0 when inactive), so the decoder's backward reports the loss
    gradient at every pair whose θ receives one; ``pairs_BK`` marks them (False: padding), the pairs a
    decoder must keep (:func:`packed_decode`). θ's gradients (Rajamanoharan et al. 2024, as sae-lens):
    from the codes −(θ/ε)·rect((pre − θ)/ε)·∂L/∂z, from ``l0`` (= Σ H(pre − θ), the batch's active count)
    −(1/ε)·rect((pre − θ)/ε)·∂L/∂l0. The input side passes gradient through active codes only.
    """

    @staticmethod
    def forward(ctx, x_BD, b_dec_D, W_enc_FD, b_enc_F, theta_F, bandwidth: float, dead_idx, k_aux: int,
                reuse_buffer: bool):
        xc_BD, pre_BF = _scores(x_BD, b_dec_D, W_enc_FD, b_enc_F, reuse_buffer)
        theta = theta_F.detach().float()
        # active (pre > θ) and window (|pre − θ| < ε/2) pairs are all above θ − ε/2: one pass over B × F
        rows, cols = (pre_BF > (theta - bandwidth / 2).to(pre_BF.dtype)).nonzero(as_tuple=True)
        pre, theta_pairs = pre_BF[rows, cols].float(), theta[cols]
        active = pre > theta_pairs
        idx_BK, vals_BK, window_BK = pad_by_row(rows, cols, x_BD.shape[0], pre * active,
                                                pre < theta_pairs + bandwidth / 2)
        l0 = active.sum().float()
        aux_vals, aux_idx = _aux_topk(pre_BF, dead_idx, k_aux)
        del pre_BF
        ctx.bandwidth = bandwidth
        ctx.save_for_backward(xc_BD, W_enc_FD, theta_F, idx_BK, vals_BK, window_BK, aux_idx, aux_vals)
        pairs_BK = (vals_BK > 0) | window_BK
        ctx.mark_non_differentiable(idx_BK, aux_idx, pairs_BK)
        return vals_BK, idx_BK, l0, aux_vals, aux_idx, pairs_BK

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_l0, g_aux, _g_aux_idx, _g_pairs):
        xc_BD, W_enc_FD, theta_F, idx_BK, vals_BK, window_BK, aux_idx, aux_vals = ctx.saved_tensors
        eps = ctx.bandwidth
        g_vals = g_vals.float() if g_vals is not None else torch.zeros_like(vals_BK)
        g, idx = _joined_grads(vals_BK, g_vals, idx_BK, aux_vals, g_aux, aux_idx)
        grads = _encoder_grads(ctx.needs_input_grad[:4], xc_BD, W_enc_FD, idx, g, padded=True)
        grad_theta = None
        if ctx.needs_input_grad[4]:
            theta = theta_F.detach().float()
            w_idx = idx_BK[window_BK]
            per_pair = -(theta[w_idx] / eps) * g_vals[window_BK]
            if g_l0 is not None:
                per_pair = per_pair - float(g_l0) / eps
            grad_theta = torch.zeros_like(theta).index_add_(0, w_idx, per_pair).to(theta_F.dtype)
        return (*grads, grad_theta, None, None, None, None)


class TopKEncode(torch.autograd.Function):
    """codes = ReLU(TopK(W_enc (x − b_dec) + b_enc)), optionally with an AuxK head over dead latents.

    ``batch=True``: BatchTopK, the top B·k scores of the whole batch (codes padded, see :func:`batch_topk`).
    """

    @staticmethod
    def forward(ctx, x_BD, b_dec_D, W_enc_FD, b_enc_F, k: int, dead_idx: Tensor | None, k_aux: int,
                reuse_buffer: bool, batch: bool = False, hint: float = 0.0):
        xc_BD, pre_BF = _scores(x_BD, b_dec_D, W_enc_FD, b_enc_F, reuse_buffer)
        vals_BK, idx_BK = batch_topk(pre_BF, k, hint) if batch else pre_BF.topk(k, dim=-1, sorted=False)
        vals_BK = vals_BK.float().relu_()
        aux_vals, aux_idx = _aux_topk(pre_BF, dead_idx, k_aux)
        del pre_BF
        ctx.save_for_backward(xc_BD, W_enc_FD, idx_BK, vals_BK, aux_idx, aux_vals)
        ctx.batch = batch
        ctx.mark_non_differentiable(idx_BK, aux_idx)
        return vals_BK, idx_BK, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        xc_BD, W_enc_FD, idx_BK, vals_BK, aux_idx, aux_vals = ctx.saved_tensors
        g, idx = _joined_grads(vals_BK, g_vals, idx_BK, aux_vals, g_aux, aux_idx)
        return (*_encoder_grads(ctx.needs_input_grad[:4], xc_BD, W_enc_FD, idx, g, padded=ctx.batch),
                None, None, None, None, None, None)


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


def topk_encode(x_BD, b_dec_D, W_enc_FD, b_enc_F, k, dead_idx=None, k_aux=0, reuse_buffer=False, batch=False,
                hint=0.0):
    """Return (vals_BK, idx_BK, aux_vals_BA, aux_idx_BA); see :class:`TopKEncode`.

    reuse_buffer: score into one CPU buffer kept across calls (training, where the batch shape is fixed).
    batch: BatchTopK (top B·k of the batch; K varies, codes padded with zeros); hint: see :func:`batch_topk`.
    """
    return TopKEncode.apply(x_BD, b_dec_D, W_enc_FD, b_enc_F, k, dead_idx, k_aux, reuse_buffer, batch, hint)


def jumprelu_encode(x_BD, b_dec_D, W_enc_FD, b_enc_F, theta_F, bandwidth, dead_idx=None, k_aux=0, reuse_buffer=False):
    """Return (vals_BK, idx_BK, l0, aux_vals_BA, aux_idx_BA, pairs_BK); see :class:`JumpReLUEncode`."""
    return JumpReLUEncode.apply(x_BD, b_dec_D, W_enc_FD, b_enc_F, theta_F, bandwidth, dead_idx, k_aux, reuse_buffer)


@torch.no_grad()
def scores(x_BD, b_dec_D, W_enc_FD, b_enc_F) -> Tensor:
    """Dense pre-activations (B × F) for inference."""
    return _scores(x_BD, b_dec_D, W_enc_FD, b_enc_F, reuse_buffer=False)[1]


def sparse_decode(vals_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor) -> Tensor:
    """Return y_BD = codes @ W_dec without materialising the dense codes; see :class:`SparseDecode`."""
    return SparseDecode.apply(vals_BK, idx_BK, W_dec_FD)


class BagDecode(torch.autograd.Function):
    """y_GD[g] = Σ_{n in bag g} vals_N[n] · W_dec_FD[idx_N[n]]: pairs in bags of varying size (bag g holds
    pairs ``offsets[g]:offsets[g + 1]``), decoded and differentiated as :class:`SparseDecode` does rows."""

    @staticmethod
    def forward(ctx, vals_N, idx_N, offsets_G1, W_dec_FD):
        y = F.embedding_bag(idx_N, W_dec_FD, offsets_G1[:-1], per_sample_weights=vals_N.to(W_dec_FD.dtype),
                            mode="sum")
        ctx.save_for_backward(vals_N, idx_N, offsets_G1, W_dec_FD)
        return y

    @staticmethod
    def backward(ctx, g_y_GD):
        vals_N, idx_N, offsets_G1, W_dec_FD = ctx.saved_tensors
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:
            g_vals = gather_dot(idx_N, W_dec_FD, g_y_GD, crow=offsets_G1).to(vals_N.dtype)
        if ctx.needs_input_grad[3]:
            bag_N = torch.repeat_interleave(torch.arange(len(offsets_G1) - 1, device=idx_N.device),
                                            offsets_G1.diff(), output_size=idx_N.numel())
            g_W = sparse_transpose_matmul(idx_N, vals_N.float(), g_y_GD.float(), W_dec_FD.shape[0],
                                          rows_N=bag_N).to(W_dec_FD.dtype)
        return g_vals, None, None, g_W


def prefix_decode(vals_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor, sizes: list[int], bias_D: Tensor,
                  keep_BK: Tensor | None = None) -> list[Tensor]:
    """P tensors (B, D): for each token ``bias`` + the decode of its codes with latents below each of the P
    increasing ``sizes`` (Matryoshka's nested prefixes), the last holding them all.

    One pass: each row's pairs are sorted by latent, so the latents of [sizes[p-1], sizes[p]) are one
    contiguous bag per (token, p); one bag decode gives every (token, part) sum, and running sums over the
    parts give the prefixes. No per-prefix gather or padding. ``keep_BK``: the pairs to decode (None: all);
    the others (padding, zero codes) are left out of the bags, so padded codes cost nnz·D, not B·K·D, and get
    zero gradient. With one size (F) this is the plain decode (no sort): see :func:`packed_decode`.
    """
    B, K = idx_BK.shape
    P, n_latents = len(sizes), sizes[-1]
    key_BK = idx_BK if keep_BK is None else torch.where(keep_BK, idx_BK, n_latents)  # left out: after every bound
    vals = vals_BK
    if P > 1:
        key_BK, order = key_BK.sort(dim=1)
        vals = vals.gather(1, order)
    kept_BK = key_BK < n_latents
    if P > 1:
        bounds = torch.tensor(sizes, dtype=key_BK.dtype, device=key_BK.device).expand(B, P).contiguous()
        ends_BP = torch.searchsorted(key_BK, bounds)
    else:
        ends_BP = kept_BK.sum(1, keepdim=True)
    offsets = ends_BP.new_zeros(B * P + 1)
    torch.cumsum(ends_BP.diff(dim=1, prepend=ends_BP.new_zeros(B, 1)).reshape(-1), 0, out=offsets[1:])
    kept = kept_BK.nonzero(as_tuple=True)  # once: a boolean-mask index would search the mask per use
    parts_BPD = BagDecode.apply(vals[kept], key_BK[kept], offsets, W_dec_FD)
    parts = parts_BPD.reshape(B, P, -1).unbind(1)
    recons = [bias_D + parts[0]]
    for part_BD in parts[1:]:  # explicit adds: a cumsum over the strided part axis is several times slower
        recons.append(recons[-1] + part_BD)
    return recons


def packed_decode(vals_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor, bias_D: Tensor, keep_BK: Tensor) -> Tensor:
    """``bias`` + the decode of padded codes from the pairs of ``keep_BK`` only, one bag per token: what a
    variable-L0 family's training decode costs (nnz·D, however wide its widest token); see :func:`prefix_decode`."""
    return prefix_decode(vals_BK, idx_BK, W_dec_FD, [W_dec_FD.shape[0]], bias_D, keep_BK)[0]
