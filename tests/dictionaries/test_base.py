"""The Dictionary interface's shared pieces: sparse codes of several encode calls joined into one."""

from __future__ import annotations

import torch

import difflens as dl
from difflens.dictionaries.base import SparseCodes
from difflens.interpret.truth import truth_report
from stores import SITE, make_world_store


def test_codes_of_calls_with_different_widths_join_with_inactive_slots():
    a = SparseCodes(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4, 5, 6]]))
    b = SparseCodes(torch.tensor([[7.0]]), torch.tensor([[8]]))
    joined = SparseCodes.cat([a, b])
    assert joined.values.tolist() == [[1, 2, 3], [7, 0, 0]] and joined.indices.tolist() == [[4, 5, 6], [8, 0, 0]]
    assert torch.equal(joined.to_dense(9)[1], b.to_dense(9)[0]) and joined.l0().tolist() == [3, 1]


def test_a_variable_l0_family_goes_through_the_truth_reports_sparse_probes(tmp_path):
    """BatchTopK codes are padded per call to that call's widest row; the probes join many calls."""
    store = make_world_store(tmp_path / "store")
    sae = dl.train_sae(store, SITE, 0, arch="batchtopk", k=4, num_latents=32, num_tokens=4_000, batch_size=256,
                       normalization="none", progress=False, checkpoint_every=0)
    report = truth_report(sae, store, controls=(), sparse_sizes=(1, 2), bootstrap=0, max_probe_tokens=2048)
    probes = report["sparse_probing"]["dictionary"]
    assert report["alive"] > 0 and set(probes) == {"1", "2"} and all(0 <= f1 <= 1 for f1 in probes.values())
