"""An index folder's files (written atomically; the safetensors file is both the checkpoint and the result):

    index.safetensors    the tensors; metadata "difflens_index" = the JSON header (identity, position)
    index.json           the same header plus a summary, for people
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from difflens.reading import CorruptFileError, read_metadata_json, read_safetensors
from difflens.store import run_layout

FORMAT = "difflens-feature-index"
FORMAT_VERSION = 1
TENSORS_FILE, HEADER_FILE = run_layout.INDEX_TENSORS, run_layout.INDEX_HEADER
META_KEY = "difflens_index"
REBUILD_HINT = "rebuild it with `difflens features index ... --overwrite` (overwrite=True)"


def read_header(folder: str | Path) -> dict | None:
    """The JSON header of an index folder (None if it holds no index); CorruptFileError names a corrupt file."""
    path = Path(folder) / TENSORS_FILE
    if not path.exists():
        return None
    _, meta = read_safetensors(path, "feature index", hint=REBUILD_HINT, tensors=False)
    header = read_metadata_json(path, meta, META_KEY, "feature index", hint=REBUILD_HINT)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptFileError(path, "feature index", "its header is not a difflens feature index's", REBUILD_HINT)
    if int(header.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {header['format_version']}; this difflens reads up to {FORMAT_VERSION}")
    return header


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """The tensors of an index folder (after :func:`read_header` found one)."""
    return read_safetensors(folder / TENSORS_FILE, "feature index", hint=REBUILD_HINT)[0]


def write_index(folder: Path, header: dict, tensors: dict[str, Tensor], summary: dict) -> None:
    """Write index.safetensors (the tensors, the header in its metadata) then index.json, each atomically (a full
    disk names the file and leaves the previous one: the package's one safetensors writer)."""
    from difflens.atomic import atomic_save_tensors, atomic_write_json

    atomic_save_tensors(folder / TENSORS_FILE, tensors, metadata={META_KEY: json.dumps(header)}, what="feature index")
    atomic_write_json(folder / HEADER_FILE, {**header, "summary": summary}, what="feature index summary")
