"""Where training data comes from: the activation store, or a plain tensor file.

Everything downstream consumes the :class:`ActivationReader` interface. :class:`TensorReader`
implements it over an in-memory matrix (tests, or a ``.safetensors`` file with an ``acts`` tensor
and optional ``image_id/step/token_row/token_col`` vectors); ``SiteReader`` over a store entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from difflens.store.reader import ActivationStore
from difflens.store.split import check_split

TRACE_KEYS = ("image_id", "step", "token_row", "token_col")


@runtime_checkable
class ActivationReader(Protocol):
    """What every reader offers (``SiteReader`` of a store, :class:`TensorReader` of a tensor).

    Row ids are global ints naming the same row whatever the split; ``num_rows`` counts the split's rows.
    """

    dim: int  # width of a row
    num_rows: int  # rows in this reader's split
    dtype: torch.dtype  # dtype the values are stored in (batches come out as float32)
    manifest: dict  # where the rows came from (a store entry's manifest.json; {"source": path} for a file)
    split: str  # "all", "train" or "held-out"

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                     drop_last: bool = False, *, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(acts_BD float32, row_ids_B int64) batches: every row of the split once per epoch (bar a dropped
        last batch); batch j goes to rank j % world_size; the order depends only on (seed, epoch)."""
        ...

    def read_rows(self, row_ids) -> torch.Tensor:
        """(R, dim) float32 rows by global id, in the order given."""
        ...

    def trace(self, row_ids) -> dict[str, np.ndarray]:
        """Where rows came from: at least "image_id", "step", "token_row", "token_col" arrays of length R."""
        ...


class TensorReader:
    """:class:`ActivationReader` over an in-memory (rows, width) matrix; it has no held-out split (split "all" only)."""

    def __init__(self, acts: torch.Tensor, trace: dict[str, torch.Tensor] | None = None, manifest: dict | None = None,
                 split: str = "all"):
        if check_split(split) != "all":
            raise ValueError(f"a tensor reader has no held-out split: split must be 'all', got {split!r}")
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
        self.split = split

    @classmethod
    def from_file(cls, path: str | Path, split: str = "all") -> "TensorReader":
        from difflens.reading import read_safetensors

        tensors, _ = read_safetensors(path, "activations file")
        if "acts" not in tensors:
            raise ValueError(f"{path}: expected a tensor named 'acts'")
        return cls(tensors.pop("acts"), {k: v for k, v in tensors.items() if k in TRACE_KEYS}, {"source": str(path)}, split)

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                     *, rank: int = 0, world_size: int = 1) -> Iterator:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if shuffle:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        else:
            order = torch.arange(self.num_rows)
        stop = self.num_rows - (self.num_rows % batch_size if drop_last else 0)
        for j, s in enumerate(range(0, stop, batch_size)):
            if j % world_size == rank:
                rows = order[s : min(s + batch_size, stop)]
                yield self._acts[rows].float(), rows

    def read_rows(self, row_ids) -> torch.Tensor:
        return self._acts[torch.as_tensor(row_ids, dtype=torch.long)].float()

    def trace(self, row_ids) -> dict[str, np.ndarray]:
        rows = torch.as_tensor(row_ids, dtype=torch.long)
        return {k: v[rows].numpy() for k, v in self._trace.items()}

    def image_ids(self) -> np.ndarray:
        """Sorted int64 ids of the images the rows came from."""
        return np.unique(self._trace["image_id"].numpy()).astype(np.int64)


def open_store(path: str | Path) -> ActivationStore:
    """Open an activation store folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"activation store {path} does not exist")
    return ActivationStore.open(path)


def pick_entry(entries: list[tuple[str, int]], site: str | None, step: int | None, where: str) -> tuple[str, int]:
    """The (site, step) to use: the given ones, or the only ones stored; errors list what is there."""
    sites = sorted({s for s, _ in entries})
    if site is None:
        if len(sites) != 1:
            raise ValueError(f"{where} holds sites {', '.join(sites) or 'none'}: choose one with site=... / --site")
        site = sites[0]
    steps = sorted({t for s, t in entries if s == site})
    if not steps:
        raise ValueError(f"site {site!r} is not in {where}; stored sites: {', '.join(sites) or 'none'}")
    if step is None:
        if len(steps) > 1:
            raise ValueError(f"site {site!r} has steps {steps} in {where}; choose one with step=... / --step")
        return site, steps[0]
    if int(step) not in steps:
        raise ValueError(f"site {site!r} has no step {step} in {where}; stored steps: {steps}")
    return site, int(step)


def resolve_step(path: str | Path, site: str, step: int | None) -> int | None:
    """The step to use for ``site``: the given one, or the only one stored (a tensor file: as given)."""
    path = Path(path)
    if path.is_file():
        return step
    return pick_entry(open_store(path).entries(), site, step, f"store {path}")[1]


def open_reader(path: str | Path, site: str, step: int | None = None, split: str = "all") -> ActivationReader:
    """A reader for (site, step) of a store folder (rows of `split` only), or for a ``.safetensors`` tensor file."""
    path = Path(path)
    check_split(split)
    if path.is_file():
        return TensorReader.from_file(path, split)
    step = resolve_step(path, site, step)
    return open_store(path).reader(site, step, split)
