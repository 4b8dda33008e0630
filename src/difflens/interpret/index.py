"""Feature index: one streaming pass over a site's rows -> what every latent of a dictionary does.

    index = build_feature_index(sae, steps="all", out="runs/x/index")    # resumable folder
    index.top_images(17)          # [{"image_id", "step", "score"}], best first
    index.activation_map(17, image_id=4, step=3)                           # (grid_h, grid_w)

Per latent the pass records, for every step of one site: firing tokens and firing images (frequency),
max and summed activation (mean over firing tokens); pooled over steps: a histogram of activations on fixed
log-spaced edges, the top-N (image, step) examples by image score (the max of the latent over the image's
tokens) and a uniform sample of firing (image, step) examples (a reservoir) from which activation-quantile
sets are drawn as delphi does (examples ordered by score, cut into equal-count bins, sampled per bin).

"Active" means value > 0 for every dictionary kind: TopK SAE and ITDA codes are never negative, and a
neuron (whose codes carry negative values) counts as firing only above zero.

Memory is O(F × (N + R + H)) plus one (F × images per batch) scratch buffer and the dictionary's own
(tokens × F) pre-activations of one encode call, capped near 128 MiB by encoding in chunks: per-token codes
are never kept, and activation maps are recomputed from the store rows of one image on demand. The reservoir keeps, per
latent, the R firing examples with the largest hash keys hash(seed, latent, image, step): a uniform sample
without replacement whose content does not depend on batching, so the top-N and the reservoir are both
"keep the M largest keys" merges.

Folder layout (written atomically; the safetensors file is the checkpoint and the result):

    index.safetensors    tensors below; metadata "difflens_index" = the JSON header (identity, position)
    index.json           the same header plus a summary, for people

Tensors (S steps, F latents, N top_n, R samples, H histogram bins, I images of the store):
    steps (S,), tokens (S,), count (S, F) firing tokens, images (S, F) firing images, sum (S, F) float64,
    max (S, F), hist (F, H + 2) [underflow, H bins, overflow], hist_edges (H + 1,),
    top_score/top_example (F, N) best first, sample_key/sample_score/sample_example (F, R), where an example
    (image, step) is one int64: image_id × S + the step's position in ``steps`` (-1: an empty slot),
    image_start/image_rows (S, I): the first store row and the number of rows of each image (-1 / 0: absent).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from difflens.configs import differences
from difflens.locks import locks_output
from difflens.outputs import same_settings
from difflens.store import run_layout

FORMAT = "difflens-feature-index"
FORMAT_VERSION = 1
TENSORS_FILE, HEADER_FILE = run_layout.INDEX_TENSORS, run_layout.INDEX_HEADER
META_KEY = "difflens_index"
CHECKPOINT_SECONDS = 60.0  # checkpoint cadence when IndexConfig.checkpoint_every is 0
_SCRATCH_ELEMENTS = 1 << 25  # pre-activation elements (tokens × latents) per encode call


@dataclass
class IndexConfig:
    """How a feature index is built (the CLI's flags come from these fields)."""

    top_n: int = 32
    """top images per latent (image score = max activation over its tokens)"""
    samples: int = 64
    """reservoir of firing (image, step) examples per latent, for activation-quantile sets"""
    quantile_bins: int = 10
    """activation-quantile bins the samples are cut into (delphi's scheme)"""
    histogram_bins: int = 64
    """fixed log-spaced histogram bins over [histogram_min, histogram_max) of the activation, so one pass suffices"""
    histogram_min: float = 1e-4
    """lowest histogram edge (smaller positive activations count as underflow)"""
    histogram_max: float = 1e4
    """highest histogram edge (larger activations count as overflow)"""
    split: str = "all"
    """store split to index: all | train | held-out"""
    batch_images: int = 32
    """images per encode batch"""
    seed: int = 0
    """seed of the reservoir's sample"""
    checkpoint_every: int = 0
    """batches between checkpoints of an index folder (0: every minute)"""

    def validate(self) -> "IndexConfig":
        from difflens.store.split import check_split

        check_split(self.split)
        for name in ("top_n", "samples", "quantile_bins", "histogram_bins", "batch_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 < self.histogram_min < self.histogram_max:
            raise ValueError(f"need 0 < histogram_min < histogram_max, got {self.histogram_min}, {self.histogram_max}")
        return self

    def identity(self) -> dict:
        """The fields that change what the pass records (a resume must match them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "quantile_bins")}


# ---------------------------------------------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------------------------------------------
def dictionary_fingerprint(dictionary) -> str:
    """sha256 (16 hex) of a dictionary's kind, shape and weights (normaliser included): which dictionary this is."""
    h = hashlib.sha256()
    k = getattr(dictionary, "k", None)
    h.update(json.dumps([dictionary.kind, int(dictionary.d_in), int(dictionary.num_latents), k]).encode())
    state = dict(dictionary.state_dict())
    if "_atoms" in state:  # ITDA: a growable buffer; only its first `size` rows are the atoms
        state["_atoms"] = dictionary.atoms
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _dictionary_identity(dictionary) -> dict:
    return {"kind": dictionary.kind, "num_latents": int(dictionary.num_latents), "d_in": int(dictionary.d_in),
            "fingerprint": dictionary_fingerprint(dictionary)}


def _store_identity(store, site: str, steps: list[int], split: str, rows: dict[int, int]) -> dict:
    """Which capture (a moved store is the same store), which rows and which images of it."""
    ident = {k: v for k, v in store.identity().items() if k != "path"}
    ident["rows"] = {str(s): int(rows[s]) for s in steps}
    if split != "all":
        held = sorted(int(i) for i in store.holdout["image_ids"])
        ident["held_out"] = hashlib.sha256(json.dumps(held).encode()).hexdigest()[:16]
    return ident


# ---------------------------------------------------------------------------------------------------------------
# vectorised bookkeeping
# ---------------------------------------------------------------------------------------------------------------
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
def encode_rows(dictionary, acts_BD: Tensor) -> tuple[Tensor, Tensor]:
    """(values_BK, indices_BK) of rows, encoded in chunks of :func:`encode_chunk_tokens` tokens."""
    step = encode_chunk_tokens(dictionary.num_latents)
    if acts_BD.shape[0] <= step:
        codes = dictionary.encode(acts_BD)
        return codes.values, codes.indices
    parts = [dictionary.encode(acts_BD[i : i + step]) for i in range(0, acts_BD.shape[0], step)]
    return torch.cat([c.values for c in parts]), torch.cat([c.indices for c in parts])


class _Accumulator:
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


def _empty_tensors(F: int, steps: list[int], n_images: int, cfg: IndexConfig) -> dict[str, Tensor]:
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


# ---------------------------------------------------------------------------------------------------------------
# store layout: which rows belong to which image
# ---------------------------------------------------------------------------------------------------------------
def image_layout(reader, n_images: int, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(first row (I,), row count (I,)) of every image in a (site, step) entry; -1 / 0 for absent images.

    Reads the trace once in chunks; an image's rows must be contiguous and images in order (as the store
    writer lays them out), else ValueError.
    """
    start = np.full(n_images, -1, dtype=np.int64)
    rows = np.zeros(n_images, dtype=np.int64)
    last = -1
    for lo in range(0, reader.total_rows, chunk):
        ids = np.asarray(reader.trace(np.arange(lo, min(lo + chunk, reader.total_rows)))["image_id"], dtype=np.int64)
        if ids.size == 0:
            continue
        if ids[0] < last or (ids.size > 1 and (np.diff(ids) < 0).any()) or ids.min() < 0 or ids.max() >= n_images:
            raise ValueError(f"{reader.dir}: image ids of the rows are not in order within [0, {n_images}); "
                             f"the feature index needs each image's rows contiguous, images in order")
        u, first, cnt = np.unique(ids, return_index=True, return_counts=True)
        new = start[u] < 0
        start[u[new]] = lo + first[new]
        rows[u] += cnt
        last = int(ids[-1])
    return start, rows  # ids never decrease, so each image's rows are one contiguous run


def _split_images(store, split: str, present: np.ndarray) -> np.ndarray:
    """Sorted ids of the images of ``split`` that have rows."""
    ids = np.flatnonzero(present)
    if split == "all":
        return ids
    if store.holdout is None:
        raise ValueError(f"store {store.root} has no held-out split, so it has no {split!r} rows; "
                         f"make one with `difflens cache split {store.root} --holdout 0.1`")
    held = np.isin(ids, np.asarray(store.holdout["image_ids"], dtype=np.int64))
    return ids[held] if split == "held-out" else ids[~held]


# ---------------------------------------------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------------------------------------------
class FeatureIndex:
    """What every latent of a dictionary does on one site's rows, at one or several steps (see module docstring).

    Loaded or built; tensors live on the CPU. ``store`` and ``dictionary`` are opened lazily from the recorded
    paths when an activation map needs them (pass them to :meth:`load` when the files moved).
    """

    def __init__(self, header: dict, tensors: dict[str, Tensor], store=None, dictionary=None):
        self.header = header
        self.tensors = tensors
        self.config = IndexConfig(**header["config"])
        self.site: str = header["site"]
        self.steps: list[int] = [int(s) for s in header["steps"]]
        self.split: str = header["split"]
        self.num_latents: int = int(header["dictionary"]["num_latents"])
        self.dictionary_kind: str = header["dictionary"]["kind"]
        self.dictionary_path: str | None = header.get("dictionary_path")
        self.store_path: str | None = header.get("store_path")
        self.stream: str = header.get("stream", "image")
        self.grid: tuple[int, int] | None = tuple(header["grid"]) if header.get("grid") else None
        self.complete: bool = bool(header.get("complete"))
        self.path: Path | None = None  # the folder it was loaded from or written to (None: in memory)
        self._store = store
        self._dictionary = dictionary
        self._readers: dict[int, object] = {}

    # ---- files ----------------------------------------------------------------------------------------------
    @staticmethod
    def read_header(folder: str | Path) -> dict | None:
        """The JSON header of an index folder (None if it holds no index); ValueError names a corrupt file."""
        from safetensors import safe_open

        path = Path(folder) / TENSORS_FILE
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            header = json.loads(meta[META_KEY])
        except Exception as err:  # safetensors raises its own error types for bad files
            raise ValueError(f"corrupt feature index {path}: {err}") from None
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a difflens feature index")
        if int(header.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {header['format_version']}; this difflens reads up to {FORMAT_VERSION}")
        return header

    @classmethod
    def load(cls, folder: str | Path, dictionary=None, store=None) -> "FeatureIndex":
        """Open an index folder; ``dictionary`` / ``store`` (checked against the index) replace the recorded paths."""
        from safetensors.torch import load_file

        folder = Path(folder)
        header = cls.read_header(folder)
        if header is None:
            raise FileNotFoundError(f"no feature index in {folder}: {folder / TENSORS_FILE} is missing")
        tensors = load_file(str(folder / TENSORS_FILE))
        index = cls(header, tensors)
        index.path = folder.resolve()
        if dictionary is not None:
            index.dictionary = dictionary
        if store is not None:
            index.store = store
        return index

    def save(self, folder: str | Path) -> Path:
        """Write index.safetensors (the tensors, the header in its metadata) then index.json, each atomically."""
        from safetensors.torch import save

        from difflens.atomic import atomic_write_bytes, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.header = {**self.header, **run_layout.relative_links(folder, store=self.store_path,
                                                                   dictionary=self.dictionary_path)}
        blob = save({k: v.contiguous() for k, v in self.tensors.items()}, metadata={META_KEY: json.dumps(self.header)})
        atomic_write_bytes(folder / TENSORS_FILE, blob)
        atomic_write_json(folder / HEADER_FILE, {**self.header, "summary": self.summary()})
        self.path = folder.resolve()
        return folder

    # ---- provenance -----------------------------------------------------------------------------------------
    @property
    def store(self):
        """The activation store the index was built on (opened on first use from its path recorded relative to
        the index, else from the absolute one; checked)."""
        if self._store is None:
            from difflens.store import ActivationStore

            if not self.store_path:
                raise ValueError("this feature index records no store path; pass store= to FeatureIndex.load")
            self._store = run_layout.open_link(self.path, self.header.get("store_relative"), self.store_path,
                                               lambda p: self._check_store(ActivationStore.open(p)),
                                               "the feature index's store")
        return self._store

    @store.setter
    def store(self, store) -> None:
        self._check_store(store)
        self._store, self._readers = store, {}

    def _check_store(self, store) -> None:
        ident = {k: v for k, v in store.identity().items() if k not in ("path", "control")}
        saved = {k: v for k, v in self.header["store"].items() if k in ident}
        diff = differences(saved, ident, "index")
        # a random-model control store draws the same images from the same prompts: only "control" tells them apart
        # (absent in stores without a control, so absent means "none" on either side)
        control, built = store.identity().get("control", "none"), self.header["store"].get("control", "none")
        if control != built:
            diff.append(f"control: index {built!r}, store {control!r}")
        if diff:
            raise ValueError(f"store {store.root} is not the one this feature index was built on ({'; '.join(diff)})")
        return store

    @property
    def dictionary(self):
        """The indexed dictionary (loaded on first use from its path recorded relative to the index, else from the
        absolute one; checked by fingerprint)."""
        if self._dictionary is None:
            if not self.dictionary_path:
                raise ValueError("this feature index records no dictionary path (it was built from an in-memory "
                                 "dictionary); pass dictionary= to FeatureIndex.load")
            from difflens.dictionaries.io import load_dictionary

            def checked(path: Path):
                self.dictionary = load_dictionary(path)  # the setter refuses another dictionary (ValueError)
                return self._dictionary

            run_layout.open_link(self.path, self.header.get("dictionary_relative"), self.dictionary_path, checked,
                                 "the feature index's dictionary")
        return self._dictionary

    @dictionary.setter
    def dictionary(self, dictionary) -> None:
        diff = differences(self.header["dictionary"], _dictionary_identity(dictionary), "index")
        if diff:
            raise ValueError(f"dictionary {getattr(dictionary, 'path', None) or '(in memory)'} is not the one this "
                             f"feature index was built with ({'; '.join(diff)})")
        self._dictionary = dictionary

    # ---- look-ups -------------------------------------------------------------------------------------------
    def _latent(self, latent) -> int:
        if isinstance(latent, bool) or not isinstance(latent, (int, np.integer, Tensor)) or (
                isinstance(latent, Tensor) and latent.numel() != 1):
            raise ValueError(f"latent must be an integer id, got {latent!r}")
        i = int(latent)
        if not 0 <= i < self.num_latents:
            raise ValueError(f"latent {i} does not exist: this {self.dictionary_kind} dictionary has latents "
                             f"0..{self.num_latents - 1}")
        return i

    def _step(self, step) -> int:
        s = int(step)
        if s not in self.steps:
            raise ValueError(f"step {s} is not in this feature index (steps {self.steps})")
        return self.steps.index(s)

    @property
    def tokens(self) -> dict[int, int]:
        """Tokens indexed per step."""
        return {s: int(n) for s, n in zip(self.steps, self.tensors["tokens"].tolist())}

    @property
    def top_n(self) -> int:
        return int(self.tensors["top_score"].shape[1])

    def frequencies(self) -> Tensor:
        """(S, F) share of each step's tokens on which each latent is active (value > 0)."""
        tokens = self.tensors["tokens"].clamp_min(1).double()[:, None]
        return self.tensors["count"].double() / tokens

    def frequency(self, latent) -> dict[int, float]:
        """Per step: the share of tokens with activation > 0."""
        i = self._latent(latent)
        return {s: float(f) for s, f in zip(self.steps, self.frequencies()[:, i].tolist())}

    def image_frequency(self, latent) -> dict[int, float]:
        """Per step: the share of indexed images on which the latent fires on at least one token."""
        i = self._latent(latent)
        indexed = self.header["images_indexed"]
        return {s: int(self.tensors["images"][j, i]) / max(int(indexed[str(s)]), 1) for j, s in enumerate(self.steps)}

    @property
    def max_activation(self) -> Tensor:
        """(F,) largest activation over every indexed token and step (0: never active)."""
        return self.tensors["max"].max(0).values

    @property
    def mean_activation(self) -> Tensor:
        """(F,) mean activation over the tokens where the latent is active (0: never active)."""
        count = self.tensors["count"].sum(0)
        return (self.tensors["sum"].sum(0) / count.clamp_min(1)).float()

    def step_stats(self, latent) -> dict[int, dict]:
        """Per step: {"frequency", "tokens", "images", "max", "mean"} of one latent."""
        i = self._latent(latent)
        t = self.tensors
        out = {}
        for j, s in enumerate(self.steps):
            n = int(t["count"][j, i])
            out[s] = {"frequency": n / max(int(t["tokens"][j]), 1), "tokens": n, "images": int(t["images"][j, i]),
                      "max": float(t["max"][j, i]), "mean": float(t["sum"][j, i]) / max(n, 1)}
        return out

    def alive(self) -> Tensor:
        """(F,) bool: active at least once."""
        return self.tensors["count"].sum(0) > 0

    def histogram(self, latent, outliers: bool = False) -> tuple[Tensor, Tensor]:
        """(edges (H+1,), counts (H,)) of the latent's active values on the fixed log-spaced edges.

        outliers=True adds the underflow and overflow bins: edges (H+3,) = [0, edges..., inf], counts (H+2,).
        """
        i = self._latent(latent)
        edges, counts = self.tensors["hist_edges"], self.tensors["hist"][i]
        if outliers:
            return torch.cat([edges.new_zeros(1), edges, edges.new_full((1,), float("inf"))]), counts.clone()
        return edges.clone(), counts[1:-1].clone()

    def _examples(self, example: Tensor, score: Tensor) -> list[dict]:
        S = len(self.steps)
        return [{"image_id": e // S, "step": self.steps[e % S], "score": v}
                for e, v in zip(example.tolist(), score.tolist()) if e >= 0]

    def top_images(self, latent) -> list[dict]:
        """[{"image_id", "step", "score"}] of the highest-scoring (image, step) examples, best first, ≤ top_n."""
        i = self._latent(latent)
        return self._examples(self.tensors["top_example"][i], self.tensors["top_score"][i])

    def samples(self, latent) -> list[dict]:
        """The reservoir: a uniform sample of firing (image, step) examples, sorted by score ascending."""
        i = self._latent(latent)
        order = torch.argsort(self.tensors["sample_score"][i], stable=True)
        return self._examples(self.tensors["sample_example"][i][order], self.tensors["sample_score"][i][order])

    def quantile_sets(self, latent, n_bins: int | None = None) -> list[list[dict]]:
        """The samples cut into ``n_bins`` (default quantile_bins) activation-quantile bins of equal count
        (delphi's scheme), lowest activations first; together they partition :meth:`samples` (bins may be empty)."""
        n_bins = self.config.quantile_bins if n_bins is None else int(n_bins)
        if n_bins < 1:
            raise ValueError(f"n_bins must be positive, got {n_bins}")
        samples = self.samples(latent)
        bounds = [round(b * len(samples) / n_bins) for b in range(n_bins + 1)]
        return [samples[bounds[b] : bounds[b + 1]] for b in range(n_bins)]

    def sample_quantiles(self, latent, n: int, n_bins: int | None = None, seed: int = 0,
                         exclude: Iterable = ()) -> list[dict]:
        """About ``n`` examples, ``n // n_bins`` drawn at random from each quantile bin (all of a smaller bin),
        skipping ``exclude`` ((image_id, step) pairs or example dicts) — e.g. a test set disjoint from the
        explanation set."""
        skip = {(int(e["image_id"]), int(e["step"])) if isinstance(e, dict) else (int(e[0]), int(e[1])) for e in exclude}
        bins = self.quantile_sets(latent, n_bins)
        per_bin = max(int(n) // len(bins), 1)
        rng = np.random.default_rng([int(seed), self._latent(latent)])
        out = []
        for b, examples in enumerate(bins):
            examples = [e for e in examples if (e["image_id"], e["step"]) not in skip]
            pick = sorted(rng.choice(len(examples), size=min(per_bin, len(examples)), replace=False).tolist())
            out += [{**examples[j], "quantile": b} for j in pick]
        return out

    # ---- activation maps ------------------------------------------------------------------------------------
    def image_rows(self, image_id, step) -> Tensor:
        """(T,) store row ids of one image's tokens at ``step`` (any split's images)."""
        j = self._step(step)
        image_id = int(image_id)
        n = self.tensors["image_rows"].shape[1]
        if not 0 <= image_id < n or int(self.tensors["image_rows"][j, image_id]) == 0:
            raise ValueError(f"image {image_id} has no rows at {self.site} step {step}")
        start = int(self.tensors["image_start"][j, image_id])
        return torch.arange(start, start + int(self.tensors["image_rows"][j, image_id]))

    def _reader(self, step: int):
        if step not in self._readers:
            self._readers[step] = self.store.reader(self.site, step, "all")
        return self._readers[step]

    @torch.no_grad()
    def activation_maps(self, latent, examples: Iterable) -> list[Tensor]:
        """Activation maps of one latent on several (image_id, step) pairs or example dicts, one encode per step.

        Each map is (grid_h, grid_w) for an image-stream site, (T,) for a text one, in token order; values are
        the dictionary's codes (negative for a neuron below zero, 0 where the latent is not among the k).
        """
        i = self._latent(latent)
        pairs = [(int(e["image_id"]), int(e["step"])) if isinstance(e, dict) else (int(e[0]), int(e[1])) for e in examples]
        dictionary = self.dictionary
        device = next((t.device for t in [*dictionary.parameters(), *dictionary.buffers()]), torch.device("cpu"))
        maps: list[Tensor | None] = [None] * len(pairs)
        for step in sorted({s for _, s in pairs}):
            which = [k for k, (_, s) in enumerate(pairs) if s == step]
            rows = [self.image_rows(pairs[k][0], step) for k in which]
            reader = self._reader(step)
            all_rows = torch.cat(rows)
            values, indices = encode_rows(dictionary, reader.read_rows(all_rows).to(device))
            act = torch.where(indices == i, values.float(), 0.0).sum(-1).cpu()
            token = torch.from_numpy(np.asarray(reader.trace(all_rows)["token_index"], dtype=np.int64))
            lo = 0
            for k, r in zip(which, rows):
                vals, tok = act[lo : lo + len(r)], token[lo : lo + len(r)]
                lo += len(r)
                out = torch.zeros(int(tok.max()) + 1 if len(tok) else 0)
                out[tok] = vals
                if self.stream == "image" and self.grid and out.numel() == self.grid[0] * self.grid[1]:
                    out = out.reshape(self.grid)
                maps[k] = out
        return maps

    def activation_map(self, latent, image_id, step) -> Tensor:
        """(grid_h, grid_w) map of the latent over one image's tokens at ``step`` ((T,) for text sites),
        recomputed by encoding that image's store rows."""
        return self.activation_maps(latent, [(image_id, step)])[0]

    # ---- summary --------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Alive latents, tokens per step, median frequency of alive latents: what index.json shows."""
        alive = self.alive()
        freq = self.frequencies().mean(0)
        return {"alive": int(alive.sum()), "dead": int((~alive).sum()), "tokens": {str(k): v for k, v in self.tokens.items()},
                "median_frequency_alive": float(freq[alive].median()) if alive.any() else 0.0,
                "complete": self.complete}

    def __repr__(self) -> str:
        return (f"FeatureIndex({self.dictionary_kind}, {self.num_latents} latents, site {self.site}, steps {self.steps}, "
                f"split {self.split}, {sum(self.tokens.values())} tokens{'' if self.complete else ', incomplete'})")


# ---------------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------------
def _open_source(dictionary, source):
    from difflens.store import ActivationStore

    if source is None:
        source = dictionary.locate_store()
    if isinstance(source, (str, Path)):
        return ActivationStore.open(source)
    if isinstance(source, ActivationStore):
        return source
    raise ValueError(f"a feature index reads an activation store (its images and row traces); got a "
                     f"{type(source).__name__}: pass a store folder or an opened store")


def _resolve_steps(store, site: str, steps, dictionary) -> list[int]:
    from difflens.store.sources import pick_entry

    where = f"store {store.root}"
    stored = sorted(t for s, t in store.entries() if s == site)
    if not stored:
        pick_entry(store.entries(), site, None, where)  # raises naming the stored sites
    if steps is None:
        steps = [dictionary.step] if dictionary.step is not None else [pick_entry(store.entries(), site, None, where)[1]]
    elif isinstance(steps, str):
        if steps != "all":
            raise ValueError(f"steps must be None, 'all', an int or a list of ints; got {steps!r}")
        steps = stored
    elif isinstance(steps, (int, np.integer)):
        steps = [int(steps)]
    out = sorted({pick_entry(store.entries(), site, int(s), where)[1] for s in steps})
    if not out:
        raise ValueError("no steps to index")
    return out


@locks_output(lambda dictionary, source=None, *, out=None, **_: out)
def build_feature_index(dictionary, source=None, *, steps=None, out=None, config: IndexConfig | None = None,
                        device="cpu", progress: bool = True, site: str | None = None, resume: bool = True,
                        max_batches: int | None = None) -> FeatureIndex:
    """Index every latent of ``dictionary`` in one streaming pass over ``source``'s rows of its site.

    source: a store folder or opened store (None: the store the dictionary was trained on). steps: None (the
    dictionary's step), "all" (every recorded step of the site) or ints. out: None builds in memory; a folder
    is written atomically, checkpointed every ``config.checkpoint_every`` batches (0: every minute) and resumed
    after a kill with the same result as an uninterrupted run; a folder made for another dictionary, store,
    site, steps or config is refused (ValueError naming the differences) unless ``resume=False``, which starts
    over. A finished folder of the same job is just loaded. site: overrides the dictionary's site.
    device: where encoding and bookkeeping run (the dictionary is moved there). max_batches: stop after that
    many batches in this call, checkpoint, and return the incomplete index (tests, budgeted runs).
    """
    from difflens.progress import progress as progress_bar

    cfg = (config or IndexConfig()).validate()
    site = site or dictionary.site
    if site is None:
        raise ValueError("the dictionary records no site: pass site=")
    store = _open_source(dictionary, source)
    steps = _resolve_steps(store, site, steps, dictionary)
    device = torch.device(device)
    dictionary.to(device)
    readers = {s: store.reader(site, s, "all") for s in steps}
    for s, r in readers.items():
        if r.dim != dictionary.d_in:
            raise ValueError(f"{site} step {s} has width {r.dim} but the dictionary expects width {dictionary.d_in}")
    n_images = int(store.meta.get("n_images") or 0) or max(_count_images(r) for r in readers.values())
    layouts = {s: image_layout(r, n_images) for s, r in readers.items()}
    todo = {s: _split_images(store, cfg.split, layouts[s][1] > 0) for s in steps}
    rows = {s: int(layouts[s][1][todo[s]].sum()) for s in steps}
    first = readers[steps[0]]
    identity = {
        "site": site, "steps": steps, "split": cfg.split,
        "dictionary": _dictionary_identity(dictionary),
        "store": _store_identity(store, site, steps, cfg.split, rows),
        "config": cfg.identity(),
    }
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **identity, "config": asdict(cfg),
        "dictionary_path": str(dictionary.path) if getattr(dictionary, "path", None) else None,
        "store_path": str(store.root.resolve()), "stream": first.stream,
        "grid": list(first.grid) if first.grid else None, "active": "value > 0",
        "images_indexed": {str(s): int(len(todo[s])) for s in steps},
        "position": {"step_index": 0, "batch": 0}, "complete": False,
    }
    tensors = None
    folder = Path(out) if out is not None else None
    if folder is not None:
        saved = FeatureIndex.read_header(folder)
        was = None if saved is None else {**{k: saved.get(k) for k in identity},
                                          "config": IndexConfig(**saved["config"]).identity()}
        if same_settings(folder, was, identity, what="a feature index", label="index", overwrite=not resume,
                         hint="use another out folder, or resume=False (--overwrite) to replace it") and resume:
            index = FeatureIndex.load(folder, dictionary=dictionary, store=store)
            if index.complete:
                index.config.quantile_bins = cfg.quantile_bins
                return index
            tensors, header["position"] = index.tensors, saved["position"]
            header["seconds"] = saved.get("seconds", 0.0)
    if tensors is None:
        tensors = _empty_tensors(dictionary.num_latents, steps, n_images, cfg)
        for j, s in enumerate(steps):
            tensors["image_start"][j] = torch.from_numpy(layouts[s][0])
            tensors["image_rows"][j] = torch.from_numpy(layouts[s][1])
    acc = _Accumulator(tensors, cfg, device)
    batches = {s: [todo[s][i : i + cfg.batch_images] for i in range(0, len(todo[s]), cfg.batch_images)] for s in steps}
    position = header["position"]
    done_tokens = int(acc.t["tokens"].sum())
    bar = progress_bar(total=sum(rows.values()), initial=done_tokens, desc=f"index {site}", unit="tok", enabled=progress)
    started, last_save, processed = time.perf_counter(), time.perf_counter(), 0
    seconds0 = float(header.get("seconds", 0.0))

    def snapshot(complete: bool) -> FeatureIndex:
        header["complete"] = complete
        header["seconds"] = seconds0 + time.perf_counter() - started
        index = FeatureIndex(json.loads(json.dumps(header)), acc.cpu(), store=store, dictionary=dictionary)
        if folder is not None:
            index.save(folder)
        return index

    try:
        for j in range(position["step_index"], len(steps)):
            step = steps[j]
            reader, start, count = readers[step], layouts[step][0], layouts[step][1]
            for b in range(position["batch"] if j == position["step_index"] else 0, len(batches[step])):
                if max_batches is not None and processed >= max_batches:
                    header["position"] = {"step_index": j, "batch": b}
                    return snapshot(False)
                images = batches[step][b]
                n_rows = count[images]
                row_ids = np.concatenate([np.arange(a, a + n) for a, n in zip(start[images], n_rows)])
                acts = reader.read_rows(row_ids).to(device)
                values, indices = encode_rows(dictionary, acts)
                slot = torch.repeat_interleave(torch.arange(len(images), device=device),
                                               torch.from_numpy(n_rows).to(device))
                acc.update(j, step, values, indices, slot, torch.from_numpy(images).to(device), len(row_ids))
                processed += 1
                bar.update(len(row_ids))
                header["position"] = {"step_index": j, "batch": b + 1}
                if folder is not None and _checkpoint_due(cfg, processed, last_save):
                    snapshot(False)
                    last_save = time.perf_counter()
            header["position"] = {"step_index": j + 1, "batch": 0}
        return snapshot(True)
    finally:
        bar.close()


def _checkpoint_due(cfg: IndexConfig, processed: int, last_save: float) -> bool:
    if cfg.checkpoint_every:
        return processed % cfg.checkpoint_every == 0
    return time.perf_counter() - last_save >= CHECKPOINT_SECONDS


def _count_images(reader) -> int:
    """Images of an entry whose store records no n_images: one past the largest image id in its trace."""
    top = -1
    for lo in range(0, reader.total_rows, 1 << 20):
        ids = reader.trace(np.arange(lo, min(lo + (1 << 20), reader.total_rows)))["image_id"]
        top = max(top, int(ids.max()) if len(ids) else -1)
    return top + 1
