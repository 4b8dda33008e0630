"""An index folder's files (written atomically; the safetensors file is both the checkpoint and the result):

    index.safetensors    the tensors; metadata "difflens_index" = the JSON header (identity, position)
    index.json           the same header plus a summary, for people
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from difflens.store import run_layout

FORMAT = "difflens-feature-index"
FORMAT_VERSION = 1
TENSORS_FILE, HEADER_FILE = run_layout.INDEX_TENSORS, run_layout.INDEX_HEADER
META_KEY = "difflens_index"


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


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """The tensors of an index folder (after :func:`read_header` found one)."""
    from safetensors.torch import load_file

    return load_file(str(folder / TENSORS_FILE))


def write_index(folder: Path, header: dict, tensors: dict[str, Tensor], summary: dict) -> None:
    """Write index.safetensors (the tensors, the header in its metadata) then index.json, each atomically."""
    from safetensors.torch import save

    from difflens.atomic import atomic_write_bytes, atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(header)})
    atomic_write_bytes(folder / TENSORS_FILE, blob)
    atomic_write_json(folder / HEADER_FILE, {**header, "summary": summary})
