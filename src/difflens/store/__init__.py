"""On-disk activation store: sharded, memory-mapped, crash-safe (see `layout` for the folder layout).

    store = ActivationStore.open(path)
    reader = store.reader("double.18.img.out", 0, split="train")   # or "all", "held-out"
    for acts_BD, row_ids_B in reader.iter_batches(4096):
        ...

`open_reader(path, site, step, split)` gives the same interface (`ActivationReader`) for a store
folder or a ``.safetensors`` tensor file.
"""

from difflens.store.layout import DTYPES
from difflens.store.reader import ActivationStore, SiteReader
from difflens.store.sources import ActivationReader, TensorReader, open_reader, open_store, resolve_step
from difflens.store.writer import ChunkRows, EntrySpec, StoreWriter

__all__ = ["ActivationStore", "SiteReader", "StoreWriter", "EntrySpec", "ChunkRows", "DTYPES",
           "ActivationReader", "TensorReader", "open_reader", "open_store", "resolve_step"]
