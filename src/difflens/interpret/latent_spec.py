"""Which latents a feature spec names: one parser and one meaning for every command that takes one
(`difflens autointerp --features`, `difflens browse --export-features`, the demo's card grid).

    all      every alive latent (fired at least once where the index looked)
    N        N alive latents drawn at random (seeded, returned sorted); every alive latent when fewer are alive
    1,5,9    exactly these latents, in this order, duplicates dropped (=7 or 7, names latent 7 alone)

N is a random sample rather than the N most frequent latents: what is measured over the sample (autointerp's
mean score) then estimates the whole dictionary, and the most frequent latents are not typical of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPEC_HELP = "all (every alive latent), N (N alive latents drawn at random, seeded) or a list such as 1,5,9 (=7: latent 7)"


def latents_from_spec(spec: str | int, alive: Sequence[int], num_latents: int, seed: int = 0,
                      option: str = "--features") -> list[int]:
    """The latents ``spec`` names (see the module docstring); ``alive``: the alive latents in increasing order,
    ``num_latents``: the dictionary's size (a listed latent must lie in 0..num_latents-1); ``option`` names the
    flag in error messages."""
    spec = str(spec).strip()
    usage = f"{option} takes {SPEC_HELP}; got {spec!r}"
    if spec == "all":
        return [int(i) for i in alive]
    listed = "," in spec or spec.startswith("=")
    try:
        values = [int(v) for v in spec.lstrip("=").split(",") if v.strip()]
    except ValueError:
        raise ValueError(usage) from None
    if listed:
        bad = [v for v in values if not 0 <= v < num_latents]
        if bad:
            raise ValueError(f"latents {bad} do not exist: this dictionary has latents 0..{num_latents - 1}")
        if not values:
            raise ValueError(usage)
        return list(dict.fromkeys(values))
    if len(values) != 1 or values[0] < 1:
        raise ValueError(usage)
    if not len(alive):
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(list(alive), size=min(values[0], len(alive)), replace=False))
