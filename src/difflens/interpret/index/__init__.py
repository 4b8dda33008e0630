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

Modules, by role:

    config.py      IndexConfig: how an index is built
    rows.py        what a build reads: the store, its steps, which rows belong to which image
    accumulate.py  the tensors while they are filled (top-N and reservoir merges, histogram buckets)
    identity.py    which dictionary and which store rows an index belongs to
    files.py       the folder's files: index.safetensors (tensors + JSON header), index.json (for people)
    queries.py     FeatureIndex: a loaded index and what it answers (the tensors' layout is in its docstring)
    build.py       build_feature_index: the pass, resumable in a folder
"""

from __future__ import annotations

from .accumulate import Accumulator, empty_tensors, encode_chunk_tokens, encode_rows, example_keys, merge_largest
from .build import CHECKPOINT_SECONDS, build_feature_index
from .config import IndexConfig
from .files import FORMAT, FORMAT_VERSION, HEADER_FILE, META_KEY, TENSORS_FILE
from .identity import dictionary_fingerprint, dictionary_identity, store_identity
from .queries import FeatureIndex
from .rows import IndexedRows, image_layout

__all__ = ["FeatureIndex", "IndexConfig", "build_feature_index", "encode_rows", "encode_chunk_tokens", "example_keys",
           "merge_largest", "image_layout", "dictionary_fingerprint", "dictionary_identity", "store_identity",
           "Accumulator", "empty_tensors", "IndexedRows", "FORMAT", "FORMAT_VERSION", "TENSORS_FILE", "HEADER_FILE",
           "META_KEY", "CHECKPOINT_SECONDS"]
