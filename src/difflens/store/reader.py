"""Reading an activation store: manifests, memory-mapped shards, shuffled and in-order batches.

Shuffling is designed so that it never dominates runtime and memory stays bounded:
shards are visited in a random order (per seed and epoch) and read whole — sequential I/O —
into a fixed-size buffer (`buffer_bytes`, default 512 MiB of stored rows); the buffer is
permuted and cut into batches; rows that do not fill a whole batch stay in the buffer and
mix with the next shards. Every row is yielded exactly once per epoch.

A reader may be restricted to the "train" or "held-out" images of the store's split (`split.py`):
per shard, the rows of the split are picked by an index array built once from the trace shards.
Each shard's CRC32 is compared with the manifest the first time the reader reads it, so bytes
changed on disk (even to other finite values) fail loudly, naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from difflens.store import layout
from difflens.atomic import atomic_write_json
from difflens.store.split import check_split, choose_holdout, describe_holdout
from difflens.reading import read_json

_TRACE_DTYPE = np.dtype("<i4")


class SiteReader:
    """Rows of one (site, step), optionally only those of one split of the store's images.

    Row ids are global indices 0..total_rows-1 in shard (chunk) order whatever the split, so an id
    names the same row in every reader of the entry; `num_rows` counts the rows of `split`.
    A shard's checksum is compared with the manifest the first time its rows are read.
    """

    def __init__(self, store: "ActivationStore", site: str, step: int, split: str = "all"):
        self.store = store
        self.split: str = check_split(split)
        self.dir = layout.entry_dir(store.root, site, step)
        self.manifest_path = self.dir / layout.SITE_MANIFEST
        m = read_json(self.manifest_path, "site manifest")
        self._check_manifest(m, site, step)
        self.manifest: dict = m
        self.site, self.step = site, int(step)
        self.dim: int = int(m["dim"])
        self.total_rows: int = int(m["rows"])  # rows of every split
        self.storage_dtype: str = m["dtype"]
        self.dtype: torch.dtype = layout.DTYPES[self.storage_dtype][1]
        self.stream: str = m["stream"]
        self.grid: tuple[int, int] | None = tuple(m["grid"]) if m.get("grid") else None
        self._names = [s["name"] for s in m["shards"]]
        self._rows = np.array([int(s["rows"]) for s in m["shards"]], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)])
        # Open (and so validate) every shard now: corrupt or truncated files fail here, by name.
        self._acts = [self._open(i, "acts") for i in range(len(self._names))]
        self._traces = [self._open(i, "trace") for i in range(len(self._names))]
        self._verified = {kind: np.zeros(len(self._names), dtype=bool) for kind in ("acts", "trace")}
        self._select, self._split_rows = self._split_index()
        self.num_rows: int = int(self._split_rows.sum())  # rows of this split
        self._image_ids: np.ndarray | None = None

    # -- validation ----------------------------------------------------------------------
    def _check_manifest(self, m: dict, site: str, step: int) -> None:
        p = self.manifest_path
        if not isinstance(m, dict) or m.get("format") != layout.FORMAT:
            raise ValueError(f"{p} is not a difflens activation manifest")
        missing = [k for k in ("site", "step", "dim", "dtype", "rows", "stream", "shards", "model") if k not in m]
        if missing:
            raise ValueError(f"corrupt manifest {p}: missing {', '.join(missing)}")
        if m["site"] != site or int(m["step"]) != int(step):
            raise ValueError(f"manifest {p} is for {m['site']} step {m['step']}, but sits in the folder of {site} step {step}")
        for key in ("model", "prompts_hash", "n_images"):
            if key in self.store.meta and m.get(key) != self.store.meta[key]:
                raise ValueError(
                    f"manifest {p} does not match {self.store.root / layout.STORE_MANIFEST}: "
                    f"{key} is {m.get(key)!r} vs {self.store.meta[key]!r} (mixed captures in one folder?)"
                )
        if m["dtype"] not in layout.DTYPES:
            raise ValueError(f"manifest {p} has unsupported dtype {m['dtype']!r}")
        if sum(int(s["rows"]) for s in m["shards"]) != int(m["rows"]):
            raise ValueError(f"corrupt manifest {p}: shard rows do not add up to rows={m['rows']}")

    def _path(self, i: int, kind: str) -> Path:
        return self.dir / f"{self._names[i]}.{kind}.npy"

    def _open(self, i: int, kind: str) -> np.ndarray:
        if kind == "acts":
            return layout.open_npy(self._path(i, kind), layout.DTYPES[self.storage_dtype][0], self.dim, int(self._rows[i]))
        return layout.open_npy(self._path(i, kind), _TRACE_DTYPE, 2, int(self._rows[i]))

    def _check_checksum(self, i: int, kind: str) -> None:
        """Compare shard i's CRC32 ("acts" or "trace") with the manifest; stores without one skip the check."""
        want = self.manifest["shards"][i].get("crc32" if kind == "acts" else "trace_crc32")
        if want is not None:
            got = layout.crc32(self._acts[i] if kind == "acts" else self._traces[i])
            if got != want:
                raise ValueError(f"corrupt shard {self._path(i, kind)}: checksum {got:#010x} != manifest {want:#010x}")
        self._verified[kind][i] = True

    def verify(self) -> None:
        """Read every shard fully and compare its CRC32 with the manifest now (catches flipped bytes)."""
        for i in range(len(self._names)):
            self._check_checksum(i, "acts")
            self._check_checksum(i, "trace")

    def _shard(self, i: int, kind: str) -> np.ndarray:
        """Shard i's (rows, dim) acts or (rows, 2) trace; its checksum is checked on first use (once per reader)."""
        if not self._verified[kind][i]:
            self._check_checksum(i, kind)
        return self._acts[i] if kind == "acts" else self._traces[i]

    # -- splits --------------------------------------------------------------------------
    def _split_index(self) -> tuple[list[torch.Tensor | None], np.ndarray]:
        """Per shard: the local indices (int64) of its rows in this split, None for all of them; and their counts."""
        n = len(self._names)
        if self.split == "all":
            return [None] * n, self._rows.copy()
        holdout = self.store.holdout
        if holdout is None:
            raise ValueError(f"store {self.store.root} has no held-out split, so it has no {self.split!r} rows; "
                             f"make one with `difflens capture split {self.store.root} --holdout 0.1`")
        held = np.asarray(sorted(holdout["image_ids"]), dtype=np.int64)
        want_held = self.split == "held-out"
        select: list[torch.Tensor | None] = []
        counts = np.zeros(n, dtype=np.int64)
        for i in range(n):
            image = np.asarray(self._shard(i, "trace")[:, 0], dtype=np.int64)
            pos = np.minimum(np.searchsorted(held, image), max(len(held) - 1, 0))
            keep = (held[pos] == image) if len(held) else np.zeros(len(image), dtype=bool)
            if not want_held:
                keep = ~keep
            counts[i] = int(keep.sum())
            select.append(None if counts[i] == len(image) else torch.from_numpy(np.flatnonzero(keep)))
        return select, counts

    def image_ids(self) -> np.ndarray:
        """Sorted int64 ids of the images that have rows in this split."""
        if self._image_ids is None:
            parts = [np.asarray(self._shard(i, "trace")[:, 0] if sel is None else self._shard(i, "trace")[sel.numpy(), 0])
                     for i, sel in enumerate(self._select) if self._split_rows[i]]
            self._image_ids = np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._image_ids.copy()

    # -- bulk reading --------------------------------------------------------------------
    def _checked_ahead(self, order: np.ndarray) -> Iterator[int]:
        """The shards of `order` holding rows of the split (others are never read), each checksummed before
        it is yielded; the next one's checksum runs on a worker thread meanwhile (zlib releases the GIL),
        so a first epoch pays little for it."""
        todo = [int(i) for i in order if self._split_rows[i]]
        if self._verified["acts"][todo].all():
            yield from todo
            return

        def check(i: int) -> None:
            if not self._verified["acts"][i]:
                self._check_checksum(i, "acts")

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="difflens-checksum") as pool:
            ahead = pool.submit(check, todo[0])
            for k, i in enumerate(todo):
                ahead.result()
                if k + 1 < len(todo):
                    ahead = pool.submit(check, todo[k + 1])
                yield i

    def _shard_tensor(self, i: int) -> torch.Tensor:
        return layout.storage_to_torch(self._shard(i, "acts"), self.storage_dtype)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        buffer_bytes: int = 512 << 20,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (acts_BD float32, row_ids_B int64); every row of the split once per epoch (bar a dropped last batch).

        Row ids are global (see the class docstring); shuffle=False reads the split's rows in id order.
        With `world_size` > 1, batch j goes to rank j % world_size (all ranks must pass the same seed and epoch).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        n = len(self._names)
        if n == 0 or self.num_rows == 0:
            return
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, 1]).integers(2**62)))
            target = max(buffer_bytes // (self.dim * 2), 2 * batch_size)
        else:
            order = np.arange(n)
            target = batch_size
        max_shard = int(self._split_rows.max())
        cap = min(target + max_shard, self.num_rows)
        buf = torch.empty((cap, self.dim), dtype=self.dtype)
        ids = torch.empty(cap, dtype=torch.int64)
        fill = 0
        batch_no = 0

        def drain(final: bool):
            nonlocal fill, batch_no
            perm = torch.randperm(fill, generator=gen) if shuffle else None
            n_full = fill // batch_size
            for b in range(n_full + (1 if final and not drop_last and fill % batch_size else 0)):
                lo, hi = b * batch_size, min((b + 1) * batch_size, fill)
                if batch_no % world_size == rank:
                    if perm is None:
                        yield buf[lo:hi].float(), ids[lo:hi].clone()
                    else:
                        idx = perm[lo:hi]
                        yield buf[idx].float(), ids[idx]
                batch_no += 1
            rest = fill - n_full * batch_size
            if not final and rest:
                keep = perm[n_full * batch_size :] if perm is not None else torch.arange(n_full * batch_size, fill)
                buf[:rest] = buf[keep]
                ids[:rest] = ids[keep]
            fill = rest if not final else 0

        for i in self._checked_ahead(order):
            r = int(self._split_rows[i])
            sel = self._select[i]
            if sel is None:
                buf[fill : fill + r] = self._shard_tensor(i)
                ids[fill : fill + r] = torch.arange(self._offsets[i], self._offsets[i] + r)
            else:
                torch.index_select(self._shard_tensor(i), 0, sel, out=buf[fill : fill + r])
                torch.add(sel, int(self._offsets[i]), out=ids[fill : fill + r])
            fill += r
            if fill >= target:
                yield from drain(final=False)
        if fill:
            yield from drain(final=True)

    # -- random access -------------------------------------------------------------------
    def _group(self, row_ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(row_ids.cpu() if isinstance(row_ids, torch.Tensor) else row_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.total_rows):
            raise ValueError(f"row ids out of range [0, {self.total_rows}) for {self.site} step {self.step}")
        return ids, np.searchsorted(self._offsets, ids, side="right") - 1

    def read_rows(self, row_ids) -> torch.Tensor:
        """Rows by global id (any split's) -> acts_ND float32, in the order given."""
        ids, shard = self._group(row_ids)
        out = torch.empty((ids.size, self.dim), dtype=torch.float32)
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            local = ids[where] - self._offsets[s]
            rows = layout.storage_to_torch(np.asarray(self._shard(s, "acts")[local]), self.storage_dtype)
            out[torch.from_numpy(where)] = rows.float()
        return out

    def trace(self, row_ids) -> dict[str, np.ndarray]:
        """Where rows came from: image_id, step, token_index, token_row, token_col (-1 for text rows), stream."""
        ids, shard = self._group(row_ids)
        image_id = np.empty(ids.size, dtype=np.int64)
        token = np.empty(ids.size, dtype=np.int64)
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            t = np.asarray(self._shard(s, "trace")[ids[where] - self._offsets[s]])
            image_id[where], token[where] = t[:, 0], t[:, 1]
        if self.stream == "image" and self.grid:
            row, col = token // self.grid[1], token % self.grid[1]
        else:
            row = col = np.full(ids.size, -1, dtype=np.int64)
        return {
            "image_id": image_id,
            "step": np.full(ids.size, self.step, dtype=np.int64),
            "token_index": token,
            "token_row": row,
            "token_col": col,
            "stream": np.full(ids.size, self.stream),
        }


def _meta_defaults(meta: dict) -> dict:
    """store.json's content with the defaults of keys older stores lack: control "none" (a normal capture)."""
    meta.setdefault("control", "none")
    return meta


class ActivationStore:
    """A completed capture folder (see `difflens.store.layout` for what it holds)."""

    def __init__(self, root: Path, meta: dict):
        self.root = Path(root)
        self.meta = _meta_defaults(meta)
        self.images_dir = self.root / layout.IMAGES_DIR
        self._prompts: list[dict] | None = None

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"activation store not found: {root} is not a directory")
        manifest = root / layout.STORE_MANIFEST
        if not manifest.exists():
            hint = (
                "the capture has not finished: rerun the same `difflens capture` command to complete it"
                if (root / layout.CAPTURE_CONFIG).exists()
                else "not a difflens activation store"
            )
            raise FileNotFoundError(f"{manifest} is missing ({hint})")
        meta = read_json(manifest, "store manifest")
        if not isinstance(meta, dict) or meta.get("format") != layout.FORMAT or "entries" not in meta:
            raise ValueError(f"corrupt store manifest {manifest}: not a difflens activation store manifest")
        if int(meta.get("format_version", -1)) > layout.FORMAT_VERSION:
            raise ValueError(f"{manifest} has format version {meta['format_version']}; this difflens reads up to {layout.FORMAT_VERSION}")
        return cls(root, meta)

    def entries(self) -> list[tuple[str, int]]:
        return [(e["site"], int(e["step"])) for e in self.meta["entries"]]

    def reader(self, site: str, step: int, split: str = "all") -> SiteReader:
        """Rows of (site, step): of every image ("all"), or of the "train" or "held-out" images only."""
        check_split(split)
        if (site, int(step)) not in self.entries():
            have = ", ".join(f"{s}@{t}" for s, t in self.entries())
            raise ValueError(f"{self.root} holds no activations for site {site!r} at step {step} (it has: {have})")
        return SiteReader(self, site, int(step), split)

    # -- identity and the held-out split -------------------------------------------------
    def identity(self) -> dict:
        """{"path" (absolute), "model", "weights", "prompts_hash", "n_images"}: which capture this is (None if
        unrecorded); a control store adds "control" and "control_weights" (the random-init copy's fingerprint)."""
        ident = {"path": str(self.root.resolve()),
                 **{k: self.meta.get(k) for k in ("model", "weights", "prompts_hash", "n_images")}}
        if self.meta["control"] != "none":
            ident.update({k: self.meta.get(k) for k in ("control", "control_weights")})
        return ident

    @property
    def holdout(self) -> dict | None:
        """{"fraction", "seed", "image_ids" (sorted)} of the held-out split in store.json, or None."""
        return self.meta.get("holdout")

    def set_holdout(self, fraction: float, seed: int = 0) -> dict:
        """(Re)choose the held-out images (rule: `difflens.store.split`) and rewrite store.json atomically.

        fraction 0 removes the split. Returns {"fraction", "seed", "image_ids"}. Readers opened before keep their rows.
        """
        n_images = self.meta.get("n_images")
        if n_images is None:
            raise ValueError(f"{self.root / layout.STORE_MANIFEST} records no n_images, so its images cannot be split")
        split = choose_holdout(int(n_images), fraction, seed)
        meta = read_json(self.root / layout.STORE_MANIFEST, "store manifest")
        meta.pop("holdout", None)
        if split is not None:
            meta["holdout"] = split
        atomic_write_json(self.root / layout.STORE_MANIFEST, meta, what="store manifest")
        self.meta = _meta_defaults(meta)
        return split or {"fraction": 0.0, "seed": int(seed), "image_ids": []}

    # -- images, prompts, seeds ----------------------------------------------------------
    def prompts(self) -> list[dict]:
        """[{"image_id", "prompt", "seed"}] for every image, indexed by image id."""
        if self._prompts is None:
            self._prompts = read_json(self.root / layout.PROMPTS_FILE, "prompts file")
        return self._prompts

    def image_info(self, image_id: int) -> dict:
        """{"image_id", "prompt", "seed", "path"} of one generated image."""
        prompts = self.prompts()
        if not 0 <= int(image_id) < len(prompts):
            raise ValueError(f"image id {image_id} out of range [0, {len(prompts)}) in {self.root}")
        return {**prompts[int(image_id)], "path": str(layout.image_path(self.root, image_id))}

    def load_image(self, image_id: int) -> np.ndarray:
        """The generated image as uint8 (H, W, 3)."""
        from PIL import Image

        path = self.image_info(image_id)["path"]
        if not Path(path).exists():
            raise FileNotFoundError(f"image {image_id} not found: {path}")
        return np.asarray(Image.open(path).convert("RGB"))

    def verify(self) -> None:
        """Check every shard's header, size and checksum; raises naming the first bad file."""
        for site, step in self.entries():
            self.reader(site, step).verify()

    def describe(self) -> str:
        """Human-readable summary (what `difflens capture info` prints)."""
        m = self.meta
        lines = [
            f"store      {self.root}",
            f"model      {m.get('model')}   (weights {m.get('weights', 'not recorded')})",
            f"images     {m.get('n_images')} at {m.get('resolution')} px, {m.get('num_steps')} steps (prompts hash {str(m.get('prompts_hash'))[:12]})",
            *([f"control    {m['control']} (seed {m.get('control_seed')}, weights {m.get('control_weights')}): "
               f"a random-init copy of the denoiser, teacher-forced; images are the trained model's"]
              if m["control"] != "none" else []),
            f"dtype      {m.get('dtype')}   difflens {m.get('difflens_version')}",
            f"split      {describe_holdout(self.holdout, m.get('n_images'))}",
            f"{'site':<40} {'step':>4} {'stream':>6} {'dim':>6} {'rows':>12} {'grid':>7} {'MB':>9}",
        ]
        for site, step in self.entries():
            r = self.reader(site, step)
            grid = "x".join(map(str, r.grid)) if r.grid else "-"
            mb = r.num_rows * r.dim * 2 / 1e6
            lines.append(f"{site:<40} {step:>4} {r.stream:>6} {r.dim:>6} {r.num_rows:>12} {grid:>7} {mb:>9.1f}")
        return "\n".join(lines)
