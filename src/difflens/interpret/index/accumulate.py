"""The streaming pass's bookkeeping: the index's tensors while they are filled, batch by batch.

Per batch of whole images, `Accumulator.update` adds firing counts, summed activations, the histogram and the
per-step max, and merges the batch's (latent, image) scores into the top-N pools and the reservoir; both pools
are "keep the M largest keys" merges (`merge_largest`), the reservoir's keys a fixed hash of the example
(`example_keys`), so neither depends on batching. `encode_rows` encodes rows in chunks that bound the dense
pre-activations' memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflens.dictionaries.base import SparseCodes

from .config import IndexConfig

_SCRATCH_ELEMENTS = 1 << 25  # pre-activation elements (tokens × latents) per encode call


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensor of values < 2**32 in and out; products stay below 2**59)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def example_keys(seed: int, latent: Tensor, image: Tensor, step: int) -> Tensor:
    """Reservoir key in [0, 2**32) of each (latent, image, step): a fixed pseudo-random function of the example."""
    h = _mix32(torch.full_like(latent, int(seed) & 0xFFFFFFFF))
    h = _mix32(h ^ latent)
    h = _mix32(h ^ image.to(latent.dtype))
    return _mix32(h ^ (int(step) & 0xFFFFFFFF))


def merge_largest(keys_FP: Tensor, payload_FP: list[Tensor], lat_C: Tensor, key_C: Tensor,
                  payload_C: list[Tensor], pad) -> None:
    """Merge candidates into per-latent pools that keep the P largest keys, in place, pools sorted descending.

    lat_C (C,) must be sorted ascending; candidates not above their pool's smallest key are dropped first, so
    a warm pool costs one comparison per candidate. ``pad`` is a key below every real and empty key.
    """
    keep = key_C > keys_FP[:, -1].index_select(0, lat_C)
    n = int(keep.sum())
    if n == 0:
        return
    if n < keep.numel():
        sel = keep.nonzero().squeeze(1)
        lat_C, key_C = lat_C.index_select(0, sel), key_C.index_select(0, sel)
        payload_C = [p.index_select(0, sel) for p in payload_C]
    latents_U, counts_U = torch.unique_consecutive(lat_C, return_counts=True)
    U, P = latents_U.numel(), keys_FP.shape[1]
    width = P + int(counts_U.max())
    group_C = torch.repeat_interleave(torch.arange(U, device=lat_C.device), counts_U)
    start_U = torch.cumsum(counts_U, 0).sub_(counts_U)
    # flat position of each candidate in the (U, width) merge matrix: row group, column P + rank in group
    flat_C = group_C * width + P + torch.arange(n, device=lat_C.device) - start_U.index_select(0, group_C)
    merged = keys_FP.new_full((U, width), pad)
    merged[:, :P] = keys_FP.index_select(0, latents_U)
    merged.view(-1).index_copy_(0, flat_C, key_C)
    best = merged.topk(P, dim=1).indices  # padding is never chosen: every row has P real or empty entries
    keys_FP.index_copy_(0, latents_U, merged.gather(1, best))
    for pool, cand in zip(payload_FP, payload_C):
        both = pool.new_empty((U, width))
        both[:, :P] = pool.index_select(0, latents_U)
        both.view(-1).index_copy_(0, flat_C, cand.to(pool.dtype))
        pool.index_copy_(0, latents_U, both.gather(1, best))


def encode_chunk_tokens(num_latents: int) -> int:
    """Tokens per encode call, so the dense (tokens × latents) pre-activations stay near 128 MiB."""
    return max(256, _SCRATCH_ELEMENTS // max(int(num_latents), 1))


@torch.no_grad()
def encode_rows(dictionary, acts_BD: Tensor, step: int | None = None) -> tuple[Tensor, Tensor]:
    """(values_BK, indices_BK) of rows of denoising ``step`` (a dictionary with per-step normalisers encodes with
    that step's), encoded in chunks of :func:`encode_chunk_tokens` tokens."""
    chunk = encode_chunk_tokens(dictionary.num_latents)
    if acts_BD.shape[0] <= chunk:
        codes = dictionary.encode(acts_BD, step)
        return codes.values, codes.indices
    parts = [dictionary.encode(acts_BD[i : i + chunk], step) for i in range(0, acts_BD.shape[0], chunk)]
    codes = SparseCodes.cat(parts)
    return codes.values, codes.indices


class Accumulator:
    """The index's tensors while they are being filled (on the encode device)."""

    def __init__(self, tensors: dict[str, Tensor], cfg: IndexConfig, device):
        t = {k: v.to(device) for k, v in tensors.items()}
        self.S = t["steps"].numel()
        self.t = t
        self.cfg = cfg
        self.F = t["top_score"].shape[0]
        self.H2 = t["hist"].shape[1]
        self._bucket_table(t["hist_edges"])
        self.scratch = torch.zeros(self.F * cfg.batch_images, dtype=torch.float32, device=device)
        self.batch_sum = torch.zeros(self.F, dtype=torch.float32, device=device)
        self.ones = torch.ones(0, dtype=torch.int64, device=device)

    def _ones(self, n: int) -> Tensor:
        """n int64 ones (a view of one buffer, grown as needed)."""
        if self.ones.numel() < n:
            self.ones = torch.ones(max(n, 2 * self.ones.numel()), dtype=torch.int64, device=self.ones.device)
        return self.ones[:n]

    @torch.no_grad()
    def update(self, s: int, step: int, values_BK: Tensor, indices_BK: Tensor, image_B: Tensor, image_ids_M: Tensor,
               rows_B: int) -> None:
        """Fold one batch of whole images into the tensors: s the step's position, image_B each row's image slot."""
        t, M = self.t, self.cfg.batch_images
        K = values_BK.shape[1]
        v = values_BK.float().reshape(-1)
        lat = indices_BK.reshape(-1).long()
        if bool(v.min() > 0):  # TopK SAEs: every kept value is positive but for rare ReLU zeros
            img = image_B.repeat_interleave(K)
        else:
            keep = (v > 0).nonzero().squeeze(1)
            v, lat, img = v.index_select(0, keep), lat.index_select(0, keep), image_B.index_select(0, keep // K)
        ones = self._ones(lat.numel())
        # scatter_add_ rather than bincount: bincount scans its input twice more for min and max
        t["tokens"][s] += rows_B
        t["count"][s].scatter_add_(0, lat, ones)
        self.batch_sum.zero_().scatter_add_(0, lat, v)  # float32 within a batch, float64 across batches
        t["sum"][s] += self.batch_sum
        t["hist"].view(-1).scatter_add_(0, lat * self.H2 + self.bins(v), ones)
        # per-(latent, image) score: max over the image's tokens, via a latent-major (F × M) scratch buffer
        scratch = self.scratch
        scratch.scatter_reduce_(0, lat * M + img, v, "amax")
        pos = scratch.nonzero().squeeze(1)  # ascending: sorted by latent
        score = scratch.index_select(0, pos)
        scratch.index_fill_(0, pos, 0.0)
        p_lat, p_slot = pos // M, pos % M
        t["max"][s].scatter_reduce_(0, p_lat, score, "amax")
        t["images"][s].scatter_add_(0, p_lat, self._ones(p_lat.numel()))
        p_example = (image_ids_M * self.S + s).index_select(0, p_slot)
        merge_largest(t["top_score"], [t["top_example"]], p_lat, score, [p_example], float("-inf"))
        key = example_keys(self.cfg.seed, p_lat, image_ids_M.index_select(0, p_slot), step)
        merge_largest(t["sample_key"], [t["sample_score"], t["sample_example"]], p_lat, key, [score, p_example], -2)

    def _bucket_table(self, edges: Tensor) -> None:
        """Tables for :meth:`bins`: the bucket of the smallest float in each cell of the float32 bit patterns that
        share sign, exponent and the top ``m`` mantissa bits, with m the smallest for which no cell holds two edges."""
        self.upper = torch.cat([edges, edges.new_full((1,), float("inf"))])  # bucket b holds v < upper[b]
        for m in range(4, 13):
            cells = torch.arange(1 << (8 + m), dtype=torch.int64)
            lo = (cells << (23 - m)).to(torch.int32).view(torch.float32)
            hi = (((cells + 1) << (23 - m)) - 1).to(torch.int32).view(torch.float32)
            first = torch.bucketize(lo, edges.cpu(), right=True)
            if int((torch.bucketize(hi, edges.cpu(), right=True) - first).max()) <= 1:
                self.cell_shift, self.cell_bucket = 23 - m, first.to(edges.device)
                return
        raise ValueError("histogram bins are too narrow for float32 activations; use fewer histogram_bins")

    def bins(self, v: Tensor) -> Tensor:
        """Histogram bucket of positive values: 0 underflow, 1..H the bins, H+1 overflow — exactly
        ``bucketize(v, edges, right=True)``, but in a few passes: a table look-up on the float's bit pattern
        (sign, exponent and top mantissa bits, monotone in v) then one comparison with the bucket's upper edge."""
        b = self.cell_bucket.index_select(0, (v.view(torch.int32) >> self.cell_shift).long())
        return b.add_(v >= self.upper.index_select(0, b))

    def cpu(self) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.t.items()}


def empty_tensors(F: int, steps: list[int], n_images: int, cfg: IndexConfig) -> dict[str, Tensor]:
    """The tensors of an index that has seen no row (shapes in the package docstring); the builder fills in
    image_start / image_rows."""
    S, N, R, H = len(steps), cfg.top_n, cfg.samples, cfg.histogram_bins
    edges = torch.logspace(math.log10(cfg.histogram_min), math.log10(cfg.histogram_max), H + 1, dtype=torch.float64)
    return {
        "steps": torch.tensor(steps, dtype=torch.int64),
        "tokens": torch.zeros(S, dtype=torch.int64),
        "count": torch.zeros(S, F, dtype=torch.int64),
        "images": torch.zeros(S, F, dtype=torch.int64),
        "sum": torch.zeros(S, F, dtype=torch.float64),
        "max": torch.zeros(S, F, dtype=torch.float32),
        "hist": torch.zeros(F, H + 2, dtype=torch.int64),
        "hist_edges": edges.float(),
        "top_score": torch.zeros(F, N, dtype=torch.float32),
        "top_example": torch.full((F, N), -1, dtype=torch.int64),
        "sample_key": torch.full((F, R), -1, dtype=torch.int64),
        "sample_score": torch.zeros(F, R, dtype=torch.float32),
        "sample_example": torch.full((F, R), -1, dtype=torch.int64),
        "image_start": torch.full((S, n_images), -1, dtype=torch.int64),
        "image_rows": torch.zeros(S, n_images, dtype=torch.int64),
    }
