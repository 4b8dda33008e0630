"""Extra concept families on a tiny synthetic world store: each family adds named concepts, the SAE is reported
with every labelling, and concepts too rare to score are left out."""

from __future__ import annotations

import numpy as np
import pytest
from stores import SITE, make_world_store

from difflens.interpret.extra_concepts import (ExtraConceptsConfig, bgpos_family, edge_family,
                                               extra_concepts, tone_family, with_extra)
from difflens.interpret.labels import token_labels


def test_families_label_the_tokens_they_name(tmp_path):
    store = make_world_store(tmp_path / "store", n_images=12)
    base = token_labels(store, grid=(16, 16))
    red = base.dense()[..., base.index("color:red")]
    names, tone = tone_family(store, base)
    assert tone.shape == (12, 256, len(names))
    looks_red = tone[..., names.index("tone:red")]
    assert looks_red[red].mean() > 0.5 and looks_red[~red].mean() < 0.05  # red tokens look red, others do not
    names, edge = edge_family(store, base)
    obj = base.dense()[..., base.index("part:object")]
    assert edge[..., names.index("edge:above")].any() and not edge[..., names.index("edge:above")][~obj].any()
    names, bgpos = bgpos_family(store, base)
    top = bgpos[..., names.index("bgpos:top-row")]
    assert not top[:, 16 * 6:].any() and top[:, :16 * 5].any()  # the top third of 16 rows is rows 0-4
    kept = with_extra(base, ["always", "never"], np.stack([np.ones_like(red), np.zeros_like(red)], -1))
    assert kept.concepts == base.concepts + ["always"]


def test_extra_concepts_reports_every_labelling(tmp_path):
    make_world_store(tmp_path / "store", split=True)
    families = ["tone", "bgpos"]
    result = extra_concepts(ExtraConceptsConfig(store=str(tmp_path / "store"), site=SITE, step=0, num_latents=16, k=2,
                                                tokens=3_000, families=families), log=lambda m: None)
    labels = [r["labels"] for r in result["rows"]]
    assert labels == ["labels as shipped", "+ tone", "+ bgpos", "+ all"]
    counts = {r["labels"]: r["concepts"] for r in result["rows"]}
    assert all(counts[f"+ {f}"] > counts["labels as shipped"] for f in families)
    assert counts["+ all"] > max(counts[f"+ {f}"] for f in families)
    assert result["rows"][0]["named_by_new_family"] == 0
    assert result["rare_latent_spread"]["alive_latents"] > 0
    with pytest.raises(ValueError, match="unknown concept families"):
        extra_concepts(ExtraConceptsConfig(families=["texture"]))
