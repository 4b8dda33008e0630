"""Writing an activation store: chunk by chunk, atomically, resumable after kill -9.

Protocol for one chunk (a fixed group of image ids generated as one batch):
  1. every (site, step) shard and every image is written by tmp + rename, then one `os.sync()`
     makes them all durable (one flush instead of an fsync per file);
  2. then the chunk's ledger marker `done/chunk-XXXXXX.json` is written atomically.
A chunk counts only once its marker exists, so a killed run leaves at worst orphan shards,
which `StoreWriter.clean_incomplete` deletes and the rerun regenerates. `finalize` turns
the ledger into per-(site, step) manifests and `store.json` once every chunk is done.
Several processes (torchrun ranks) may write disjoint chunks into the same store.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difflens._version import __version__
from difflens.store import layout
from difflens.atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json, remove_temporaries
from difflens.reading import read_json
from difflens.store.split import choose_holdout


@dataclass(frozen=True)
class EntrySpec:
    """Static facts about one recorded (site, step), written into its manifest.

    stream: "image" (rows are image tokens, `grid` = (grid_h, grid_w), token = row * grid_w + col)
    or "text" (rows are text tokens, `grid` = None).
    """

    site: str
    step: int
    dim: int
    stream: str
    tokens_per_image: int
    grid: tuple[int, int] | None = None


@dataclass
class ChunkRows:
    """The rows one chunk contributes to one (site, step): acts_ND plus their trace."""

    acts_ND: torch.Tensor
    image_id_N: np.ndarray  # int
    token_index_N: np.ndarray  # int


def _entry_key(site: str, step: int) -> str:
    return f"{site}@{int(step)}"


class StoreWriter:
    """Writes chunks of activations, their traces and the generated images into `root`."""

    def __init__(self, root: str | Path, dtype: str = "float16"):
        self.root = Path(root)
        self.dtype = layout.check_dtype(dtype)

    # -- set-up and resume ---------------------------------------------------------------
    def prepare(self, config: dict, prompts: list[dict]) -> None:
        """Create the store, or check that a resumed store was made by the same settings.

        `config` (JSON-able) must equal the stored capture.json on resume; `prompts` is the
        full list of {"image_id", "prompt", "seed"}. Call from one process only (rank 0).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        cfg_path = self.root / layout.CAPTURE_CONFIG
        config = json.loads(json.dumps(config))  # normalise tuples etc.
        if cfg_path.exists():
            old = read_json(cfg_path, "capture config")
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ValueError(
                    f"{cfg_path} was written by a capture with different settings ({', '.join(diff)}); "
                    f"rerun with the original settings to resume, or choose a new --out directory"
                )
        else:
            if (self.root / layout.STORE_MANIFEST).exists() or any(self.root.iterdir()):
                raise ValueError(f"--out {self.root} exists, is not empty and holds no {layout.CAPTURE_CONFIG}")
            atomic_write_json(cfg_path, config, what="capture config")  # first, so a resume recognises the folder as ours
        for sub in (layout.IMAGES_DIR, layout.DONE_DIR, layout.SITES_DIR):
            (self.root / sub).mkdir(exist_ok=True)
        prompts_path = self.root / layout.PROMPTS_FILE
        if not prompts_path.exists():
            atomic_write_json(prompts_path, prompts, what="prompts file")
        self.clean_incomplete()

    def check_config(self, config: dict) -> None:
        """For non-zero ranks: the store must already hold exactly this capture config."""
        old = read_json(self.root / layout.CAPTURE_CONFIG, "capture config")
        if old != json.loads(json.dumps(config)):
            raise ValueError(f"{self.root / layout.CAPTURE_CONFIG} does not match this rank's settings")

    def completed_chunks(self) -> set[int]:
        done = self.root / layout.DONE_DIR
        if not done.exists():
            return set()
        return {int(p.name[len("chunk-") : -len(".json")]) for p in done.glob("chunk-*.json")}

    def clean_incomplete(self) -> None:
        """Remove temporaries and shards of chunks that have no ledger marker (a killed run's leftovers)."""
        remove_temporaries(self.root)
        done = {layout.chunk_name(c) for c in self.completed_chunks()}
        sites = self.root / layout.SITES_DIR
        if sites.exists():
            for shard in sites.glob("*/step-*/chunk-*.npy"):
                if shard.name.split(".")[0] not in done:
                    shard.unlink()

    # -- writing -------------------------------------------------------------------------
    def write_chunk(
        self,
        chunk_id: int,
        image_ids: list[int],
        images_BHWC: np.ndarray | None,
        rows: dict[tuple[str, int], ChunkRows],
    ) -> None:
        """Write one chunk's shards and images, then its ledger marker (the commit point)."""
        self.commit_chunk(self.stage_chunk(chunk_id, image_ids, images_BHWC, rows))

    def stage_chunk(
        self,
        chunk_id: int,
        image_ids: list[int],
        images_BHWC: np.ndarray | None,
        rows: dict[tuple[str, int], ChunkRows],
    ) -> dict:
        """Write one chunk's shards and images (not yet durable, not yet counted); returns its ledger marker.

        The CPU work of a chunk happens here; `commit_chunk` only waits on the disk, so a caller may run
        it on another thread while the next chunk is computed.
        """
        shards = {}
        for (site, step), r in rows.items():
            d = layout.entry_dir(self.root, site, step)
            d.mkdir(parents=True, exist_ok=True)
            acts = layout.to_storage(r.acts_ND, self.dtype)
            layout.check_finite(acts, r.acts_ND, self.dtype, f"{site} step {step}")
            trace = np.stack([np.asarray(r.image_id_N), np.asarray(r.token_index_N)], axis=1).astype(np.int32)
            if trace.shape[0] != acts.shape[0]:
                raise ValueError(f"{site}@{step}: {acts.shape[0]} rows but {trace.shape[0]} trace entries")
            name = layout.chunk_name(chunk_id)
            atomic_save_npy(d / f"{name}.acts.npy", acts, sync_dir=False, fsync=False, what="activation shard")
            atomic_save_npy(d / f"{name}.trace.npy", trace, sync_dir=False, fsync=False, what="trace shard")
            shards[_entry_key(site, step)] = {"rows": int(acts.shape[0]), "crc32": layout.crc32(acts),
                                              "trace_crc32": layout.crc32(trace)}
        if images_BHWC is not None:
            for image_id, img in zip(image_ids, images_BHWC):
                atomic_write_bytes(layout.image_path(self.root, image_id), _png_bytes(img), sync_dir=False, fsync=False,
                                   what="generated image")
        return {"chunk": int(chunk_id), "image_ids": [int(i) for i in image_ids], "shards": shards}

    def commit_chunk(self, marker: dict) -> None:
        """Make a staged chunk durable, then write its ledger marker: from here on the chunk counts."""
        # One flush of all staged files (and renames) before the marker, instead of an fsync per file:
        # a chunk without a marker is discarded and redone on resume.
        os.sync()
        atomic_write_json(layout.done_path(self.root, marker["chunk"]), marker, what="ledger marker")

    # -- completion ----------------------------------------------------------------------
    def finalize(self, entries: list[EntrySpec], n_chunks: int, meta: dict, holdout: float = 0.0,
                 holdout_seed: int = 0) -> dict:
        """Write every (site, step) manifest and `store.json` from the ledger; returns store.json's content.

        `meta` holds store-wide facts (model, n_images, prompts_hash, ...), copied into every manifest.
        `holdout` > 0 records a held-out split of that fraction of meta["n_images"] images in store.json
        (see `difflens.store.split`); it is not part of the capture settings, so a rerun may change it.
        """
        if holdout and meta.get("n_images") is None:
            raise ValueError("a held-out split needs meta['n_images']")
        split = choose_holdout(int(meta.get("n_images") or 0), holdout, holdout_seed)
        markers = []
        for c in range(n_chunks):
            path = layout.done_path(self.root, c)
            if not path.exists():
                raise ValueError(f"cannot finalize {self.root}: chunk {c} is not done (missing {path})")
            markers.append(read_json(path, "ledger marker"))
        listed = []
        for e in entries:
            key = _entry_key(e.site, e.step)
            shards = []
            for m in markers:
                if key not in m["shards"]:
                    raise ValueError(f"ledger marker for chunk {m['chunk']} has no shard for {key}")
                shards.append({"name": layout.chunk_name(m["chunk"]), **m["shards"][key]})
            manifest = {
                "format": layout.FORMAT,
                "format_version": layout.FORMAT_VERSION,
                "difflens_version": __version__,
                **meta,
                **{k: v for k, v in asdict(e).items()},
                "grid": list(e.grid) if e.grid else None,
                "dtype": self.dtype,
                "rows": sum(s["rows"] for s in shards),
                "shards": shards,
            }
            d = layout.entry_dir(self.root, e.site, e.step)
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_json(d / layout.SITE_MANIFEST, manifest, sync_dir=False, fsync=False, what="site manifest")
            listed.append({"site": e.site, "step": e.step, "path": str(d.relative_to(self.root)), "rows": manifest["rows"]})
        store = {
            "format": layout.FORMAT,
            "format_version": layout.FORMAT_VERSION,
            "difflens_version": __version__,
            **meta,
            "dtype": self.dtype,
            "entries": listed,
        }
        if split is not None:
            store["holdout"] = split
        os.sync()  # every manifest is durable before store.json, the store's commit point, names them
        atomic_write_json(self.root / layout.STORE_MANIFEST, store, what="store manifest")
        return store


def _png_bytes(img_HWC: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img_HWC, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)  # 3x faster than the default, ~1.4x larger
    return buf.getvalue()
