"""Shared fixtures. Test modules mirror the package (tests/<package>/test_<module>.py); helpers they share live
beside this file (stores.py: small activation stores; tiny_models.py: tiny random FLUX / SDXL adapters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stores import SITE, make_site_store, synthetic_acts

torch.set_num_threads(1)  # deterministic, and polite on a shared 2-core machine


@pytest.fixture(scope="module")
def site_store(tmp_path_factory) -> Path:
    """A 128-image synthetic store with one image site at step 0 (16 dims, 16 tokens an image)."""
    return make_site_store(tmp_path_factory.mktemp("site-store"), {SITE: synthetic_acts(128, 16, 0)})
