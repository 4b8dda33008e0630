"""Which dictionary and which store rows an index belongs to: the identities a resume and a reload check."""

from __future__ import annotations

import hashlib
import json

import torch


def dictionary_fingerprint(dictionary) -> str:
    """sha256 (16 hex) of a dictionary's kind, shape and weights (normaliser included): which dictionary this is."""
    h = hashlib.sha256()
    k = getattr(dictionary, "k", None)
    h.update(json.dumps([dictionary.kind, int(dictionary.d_in), int(dictionary.num_latents), k]).encode())
    state = dict(dictionary.state_dict())
    if "_atoms" in state:  # ITDA: a growable buffer; only its first `size` rows are the atoms
        state["_atoms"] = dictionary.atoms
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def dictionary_identity(dictionary) -> dict:
    """What an index records of its dictionary: kind, shape and weight fingerprint."""
    return {"kind": dictionary.kind, "num_latents": int(dictionary.num_latents), "d_in": int(dictionary.d_in),
            "fingerprint": dictionary_fingerprint(dictionary)}


def store_identity(store, site: str, steps: list[int], split: str, rows: dict[int, int]) -> dict:
    """Which capture (a moved store is the same store), which rows and which images of it."""
    ident = {k: v for k, v in store.identity().items() if k != "path"}
    ident["rows"] = {str(s): int(rows[s]) for s in steps}
    if split != "all":
        held = sorted(int(i) for i in store.holdout["image_ids"])
        ident["held_out"] = hashlib.sha256(json.dumps(held).encode()).hexdigest()[:16]
    return ident
