"""What a build reads: the store, the site's steps, and which store rows belong to which image of the split.

The pass walks whole images (a batch is `batch_images` images, all their rows), so it needs each image's first
row and row count per step (`image_layout`, one read of the trace); `IndexedRows` gathers that for every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class IndexedRows:
    """The rows one index covers: ``layouts[step]`` = (first row (I,), row count (I,)) of every image of the store
    (-1 / 0: absent); ``todo[step]`` the sorted ids of the split's images that have rows at that step."""

    store: object
    site: str
    steps: list[int]
    readers: dict[int, object]
    n_images: int
    layouts: dict[int, tuple[np.ndarray, np.ndarray]]
    todo: dict[int, np.ndarray]

    @classmethod
    def open(cls, dictionary, source, site: str | None, steps, split: str) -> "IndexedRows":
        """Open the source (None: the dictionary's store), resolve the steps and check every entry's width."""
        site = site or dictionary.site
        if site is None:
            raise ValueError("the dictionary records no site: pass site=")
        store = _open_source(dictionary, source)
        steps = _resolve_steps(store, site, steps, dictionary)
        readers = {s: store.reader(site, s, "all") for s in steps}
        for s, r in readers.items():
            if r.dim != dictionary.d_in:
                raise ValueError(f"{site} step {s} has width {r.dim} but the dictionary expects width {dictionary.d_in}")
        n_images = int(store.meta.get("n_images") or 0) or max(_count_images(r) for r in readers.values())
        layouts = {s: image_layout(r, n_images) for s, r in readers.items()}
        todo = {s: _split_images(store, split, layouts[s][1] > 0) for s in steps}
        return cls(store, site, steps, readers, n_images, layouts, todo)

    @property
    def rows(self) -> dict[int, int]:
        """Rows indexed per step."""
        return {s: int(self.layouts[s][1][self.todo[s]].sum()) for s in self.steps}

    def row_ids(self, step: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(store row ids of ``images`` at ``step``, in image order; each image's row count)."""
        start, count = self.layouts[step]
        n_rows = count[images]
        return np.concatenate([np.arange(a, a + n) for a, n in zip(start[images], n_rows)]), n_rows


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
    if steps is None:  # the dictionary's own step(s): all of them for one trained across steps
        steps = dictionary.steps or [pick_entry(store.entries(), site, None, where)[1]]
    elif isinstance(steps, str):
        if steps != "all":
            raise ValueError(f"steps must be None, 'all', an int or a list of ints; got {steps!r}")
        steps = stored
    elif isinstance(steps, (int, np.integer)):
        steps = [int(steps)]
    out = sorted({pick_entry(store.entries(), site, int(s), where)[1] for s in steps})
    if not out:
        raise ValueError("no steps to index")
    dictionary.check_steps(out, "indexed")
    return out


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
                         f"make one with `difflens capture split {store.root} --holdout 0.1`")
    held = np.isin(ids, np.asarray(store.holdout["image_ids"], dtype=np.int64))
    return ids[held] if split == "held-out" else ids[~held]


def _count_images(reader) -> int:
    """Images of an entry whose store records no n_images: one past the largest image id in its trace."""
    top = -1
    for lo in range(0, reader.total_rows, 1 << 20):
        ids = reader.trace(np.arange(lo, min(lo + (1 << 20), reader.total_rows)))["image_id"]
        top = max(top, int(ids.max()) if len(ids) else -1)
    return top + 1
