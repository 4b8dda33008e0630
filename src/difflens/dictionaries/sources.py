"""Where training data comes from: the activation store, or a plain tensor file.

Everything downstream consumes the store's reader interface::

    reader.dim, reader.num_rows, reader.dtype, reader.manifest
    reader.iter_batches(batch_size, shuffle=True, seed=0, epoch=0, drop_last=False)
        -> iterator of (acts_BN float32, row_ids_B int64), every row once per epoch
    reader.read_rows(row_ids) -> (R, N) float32
    reader.trace(row_ids) -> {"image_id", "step", "token_row", "token_col"} numpy arrays

:class:`TensorReader` implements it over an in-memory matrix (tests, or a ``.safetensors`` file
with an ``acts`` tensor and optional ``image_id/step/token_row/token_col`` vectors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file

TRACE_KEYS = ("image_id", "step", "token_row", "token_col")


class TensorReader:
    """Reader over an in-memory (rows, width) matrix with the activation store's interface."""

    def __init__(self, acts: torch.Tensor, trace: dict[str, torch.Tensor] | None = None, manifest: dict | None = None):
        if acts.ndim != 2:
            raise ValueError(f"activations must be (rows, width), got shape {tuple(acts.shape)}")
        self._acts = acts
        n = acts.shape[0]
        default = {"image_id": torch.zeros(n), "step": torch.zeros(n), "token_row": torch.arange(n), "token_col": torch.zeros(n)}
        self._trace = {k: torch.as_tensor((trace or default).get(k, default[k])).long() for k in TRACE_KEYS}
        self.manifest = manifest or {}
        self.dim = acts.shape[1]
        self.num_rows = n
        self.dtype = acts.dtype

    @classmethod
    def from_file(cls, path: str | Path) -> "TensorReader":
        tensors = load_file(str(path))
        if "acts" not in tensors:
            raise ValueError(f"{path}: expected a tensor named 'acts'")
        return cls(tensors.pop("acts"), {k: v for k, v in tensors.items() if k in TRACE_KEYS}, {"source": str(path)})

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False) -> Iterator:
        if shuffle:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        else:
            order = torch.arange(self.num_rows)
        stop = self.num_rows - (self.num_rows % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            rows = order[s : min(s + batch_size, stop)]
            yield self._acts[rows].float(), rows

    def read_rows(self, row_ids) -> torch.Tensor:
        return self._acts[torch.as_tensor(row_ids, dtype=torch.long)].float()

    def trace(self, row_ids) -> dict[str, np.ndarray]:
        rows = torch.as_tensor(row_ids, dtype=torch.long)
        return {k: v[rows].numpy() for k, v in self._trace.items()}


def open_store(path: str | Path):
    """Open an activation store folder (requires ``difflens.store``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"activation store {path} does not exist")
    try:
        from difflens.store import ActivationStore
    except ImportError as err:  # pragma: no cover - depends on the store area being installed
        raise ValueError(f"cannot open {path}: difflens.store is unavailable ({err})") from err
    return ActivationStore.open(path)


def resolve_step(path: str | Path, site: str, step: int | None) -> int | None:
    """The step to use for ``site``: the given one, or the only one stored."""
    path = Path(path)
    if path.is_file():
        return step
    entries = open_store(path).entries()
    steps = sorted({s for name, s in entries if name == site})
    if not steps:
        sites = sorted({name for name, _ in entries})
        raise ValueError(f"site {site!r} is not in store {path}; stored sites: {', '.join(sites) or 'none'}")
    if step is None:
        if len(steps) > 1:
            raise ValueError(f"site {site!r} has steps {steps} in {path}; choose one with --step")
        return steps[0]
    if step not in steps:
        raise ValueError(f"site {site!r} has no step {step} in {path}; stored steps: {steps}")
    return step


def open_reader(path: str | Path, site: str, step: int | None = None):
    """A reader for (site, step) of a store folder, or for a ``.safetensors`` tensor file."""
    path = Path(path)
    if path.is_file():
        return TensorReader.from_file(path)
    step = resolve_step(path, site, step)
    return open_store(path).reader(site, step)
