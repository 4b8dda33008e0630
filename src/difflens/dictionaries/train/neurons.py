"""The MLP-neuron baseline needs no training: its dictionary is the site's hidden units, with provenance."""

from __future__ import annotations

from ..io import save_dictionary
from ..neurons import NeuronBasis
from .data import resolve_data


def neuron_baseline(source, site: str | None = None, step: int | None = None, *, k: int | None = None,
                    out: str | None = None, split: str = "auto") -> NeuronBasis:
    """A :class:`NeuronBasis` over ``source``'s (MLP) site, k-sparse when ``k`` is set; written to ``out`` if given."""
    data = resolve_data(source, site, step, split)
    neurons = NeuronBasis(data.reader.dim, k)
    neurons.meta = {**data.origin(), "method": "neurons", "k": k}
    if out is not None:
        save_dictionary(neurons, out)
    return neurons
