"""Where things live inside an activation store, and how rows are encoded on disk.

    DIR/
      store.json                       top-level manifest, written when the capture completes;
                                       its "holdout" names the held-out images (see `split`)
      capture.json                     the capture's settings (a rerun must match them)
      prompts.json                     [{"image_id", "prompt", "seed"}] for every image
      images/000123.png                the generated image of image 123
      done/chunk-000004.json           ledger: one marker per completed chunk of images
      sites/<site>/step-<k>/
        manifest.json                  per-(site, step) manifest (dims, dtype, rows, shards with the
                                       crc32 of each acts and trace shard, checked on first read)
        chunk-000004.acts.npy          (rows, dim) activations, float16 or bfloat16 bits (uint16)
        chunk-000004.trace.npy         (rows, 2) int32: image_id, token_index

A chunk is a fixed group of consecutive image ids, generated together as one batch. Its
shards appear in the store only once the chunk's ledger marker exists; shards without a
marker are leftovers of a killed run and are deleted on resume.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch

FORMAT = "difflens-activations"
FORMAT_VERSION = 1

STORE_MANIFEST = "store.json"
CAPTURE_CONFIG = "capture.json"
PROMPTS_FILE = "prompts.json"
SITE_MANIFEST = "manifest.json"
IMAGES_DIR = "images"
DONE_DIR = "done"
SITES_DIR = "sites"

# Storage dtypes: name -> (numpy dtype on disk, torch dtype of the values).
DTYPES = {
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),  # numpy has no bfloat16: raw bits
}


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"unsupported store dtype {name!r}; choose one of {sorted(DTYPES)}")
    return name


def entry_dir(root: Path, site: str, step: int) -> Path:
    return Path(root) / SITES_DIR / site / f"step-{int(step):03d}"


def chunk_name(chunk_id: int) -> str:
    return f"chunk-{int(chunk_id):06d}"


def done_path(root: Path, chunk_id: int) -> Path:
    return Path(root) / DONE_DIR / f"{chunk_name(chunk_id)}.json"


def image_path(root: Path, image_id: int) -> Path:
    return Path(root) / IMAGES_DIR / f"{int(image_id):06d}.png"


def to_storage(acts_ND: torch.Tensor, dtype: str) -> np.ndarray:
    """Encode activations (any float dtype, any device) as the on-disk numpy array."""
    disk_np, value_torch = DTYPES[dtype]
    t = acts_ND.detach().to(device="cpu", dtype=value_torch).contiguous()
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(disk_np)
    return t.numpy()


_EXPONENT_MASK = {"float16": 0x7C00, "bfloat16": 0x7F80}  # all exponent bits set <=> inf or NaN


def check_finite(stored: np.ndarray, original: torch.Tensor, dtype: str, where: str) -> None:
    """Raise a clear error if stored rows hold inf/NaN: an overflow of `dtype`, or non-finite model output.

    Reads the exponent bits with numpy (~100x faster than torch.isfinite on half precision on CPU);
    `original` (the values before the cast) is only looked at to explain a failure.
    """
    mask = _EXPONENT_MASK[dtype]
    if stored.size == 0 or not ((stored.view(np.uint16) & mask) == mask).any():
        return
    if bool(torch.isfinite(original).all()):
        raise ValueError(f"activations at {where} overflow {dtype} (max |x| = {original.abs().max().item():.3g}); "
                         f"capture with --store-dtype bfloat16")
    raise ValueError(f"activations at {where} contain NaN or inf (the model itself produced them)")


def crc32(array: np.ndarray) -> int:
    """CRC32 of an array's raw bytes (a shard's data, header excluded): what manifests record per shard."""
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def storage_to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """View an on-disk numpy array (rows, dim) as a torch tensor of the stored value dtype (no copy)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def open_npy(path: Path, expect_dtype: np.dtype, expect_cols: int | None, expect_rows: int | None) -> np.memmap:
    """Memory-map a .npy shard after checking its header and size; errors name the file."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise FileNotFoundError(f"activation shard missing: {path}") from None
    except (ValueError, OSError) as err:
        raise ValueError(f"corrupt shard {path}: unreadable .npy header ({err})") from None
    if fortran or dtype != expect_dtype or len(shape) != 2:
        raise ValueError(
            f"corrupt shard {path}: header says shape {shape}, dtype {dtype}"
            f"{' (Fortran order)' if fortran else ''}; expected 2-D {expect_dtype}"
        )
    if expect_cols is not None and shape[1] != expect_cols:
        raise ValueError(f"shard {path} has {shape[1]} columns but the manifest says {expect_cols}")
    if expect_rows is not None and shape[0] != expect_rows:
        raise ValueError(f"shard {path} has {shape[0]} rows but the manifest says {expect_rows}")
    size = os.path.getsize(path)
    need = offset + shape[0] * shape[1] * dtype.itemsize
    if size != need:
        raise ValueError(f"corrupt shard {path}: file is {size} bytes, expected {need} (truncated or padded)")
    if shape[0] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(shape))
