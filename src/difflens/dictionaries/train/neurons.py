"""The MLP-neuron baseline needs no training: its dictionary is the site's hidden units, with provenance."""

from __future__ import annotations

from ...locks import output_lock
from ...outputs import same_settings
from ...store.run_layout import is_dictionary
from ..io import read_cfg, save_dictionary
from ..neurons import NeuronBasis
from .data import resolve_data
from .job import REPLACE_HINT, data_identity


def neuron_baseline(source, site: str | None = None, step: int | None = None, *, k: int | None = None,
                    out: str | None = None, split: str = "auto", overwrite: bool = False) -> NeuronBasis:
    """A :class:`NeuronBasis` over ``source``'s (MLP) site, k-sparse when ``k`` is set; written to ``out`` if given.

    Like training, it never replaces a dictionary made by other settings in ``out`` unless ``overwrite``.
    """
    data = resolve_data(source, site, step, split)
    neurons = NeuronBasis(data.reader.dim, k)
    job = {"settings": {"method": "neurons", "k": k}, "data": data_identity(data)}
    neurons.meta = {**data.origin(), "method": "neurons", "k": k, "job": job}
    if out is not None:
        with output_lock(out):
            recorded = None
            if is_dictionary(out):
                meta = read_cfg(out).get("difflens_meta", {})
                # written before neurons recorded their job: compare what they do record
                recorded = meta.get("job") or {"settings": {"method": meta.get("method"), "k": meta.get("k")},
                                               "data": {**job["data"], "site": meta.get("site"), "step": meta.get("step")}}
            same_settings(out, recorded, job, what="a finished dictionary", overwrite=overwrite, label="finished",
                          hint=REPLACE_HINT)
            save_dictionary(neurons, out)
    return neurons
