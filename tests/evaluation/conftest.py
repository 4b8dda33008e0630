"""Fixtures of the evaluation tests: a two-site, two-step store with a held-out split, and a run folder with one
tiny SAE per site trained on its train rows at step 0."""

from __future__ import annotations

from pathlib import Path

import pytest

import difflens as dl
from stores import SHALLOW_SITE as SHALLOW
from stores import SITE as DEEP
from stores import TINY_SAE, make_site_store, synthetic_acts


@pytest.fixture(scope="module")
def split_store(tmp_path_factory) -> Path:
    """64 images x 16 tokens, sites double.0/1.img.out (16 dims), steps 0 and 1 (step 1 = 2 x step 0), a quarter of
    the images held out."""
    root = make_site_store(tmp_path_factory.mktemp("eval-store"),
                           {SHALLOW: synthetic_acts(64, 16, 1), DEEP: synthetic_acts(64, 16, 0)}, steps=(0, 1))
    dl.open_store(root).set_holdout(0.25, seed=0)
    return root


@pytest.fixture(scope="module")
def eval_run(split_store, tmp_path_factory) -> Path:
    """A run folder as `difflens train --out RUN` leaves it: RUN/<name>/ per dictionary (deep site first by name)."""
    run = tmp_path_factory.mktemp("eval-run")
    dl.train_sae(split_store, DEEP, 0, out=run / "a_deep", **TINY_SAE)
    dl.train_sae(split_store, SHALLOW, 0, out=run / "b_shallow", **TINY_SAE)
    return run
