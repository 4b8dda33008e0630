"""Evaluation metrics: the one FVU definition, streamed metrics, L0 and dead latents, the evaluation split."""

import pytest
import torch

import difflens as dl
from difflens.dictionaries import NeuronBasis, SAEConfig, TopKSAE
from difflens.dictionaries.base import Dictionary, SparseCodes
from difflens.dictionaries.io import load_dictionary
from difflens.dictionaries.normalization import Normalizer
from difflens.evaluation import MetricAccumulator, evaluate, fvu
from difflens.evaluation.metrics import eval_split, format_table, loss_space
from difflens.store.sources import TensorReader


def test_fvu_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g) + 10
    assert abs(fvu(x, x)) < 1e-12
    assert abs(fvu(x, x.mean(0).expand_as(x)) - 1.0) < 1e-9  # predicting the mean explains nothing
    noise = torch.randn(100, 5, generator=g)
    expected = float(noise.double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
    assert abs(fvu(x, x + noise) - expected) < 1e-6  # x + noise is rounded to float32


def test_streamed_accumulator_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 7, generator=g) * 3 + 2
    r = x + 0.3 * torch.randn(1000, 7, generator=g)
    acc = MetricAccumulator(7, 0)
    for a, b in zip(x.split(128), r.split(128)):
        acc.update(a, b)
    res = acc.result()
    assert abs(res["fvu"] - fvu(x, r)) < 1e-9 and abs(res["variance_explained"] - (1 - fvu(x, r))) < 1e-9


def test_evaluate_l0_dead_and_kinds():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 8, generator=g).relu()
    reader = TensorReader(x)
    nb = evaluate(NeuronBasis(8, k=2), reader, max_tokens=300, batch_size=100)
    assert nb["tokens"] == 300 and nb["l0"] <= 2 and nb["kind"] == "neurons"
    sae = TopKSAE(8, SAEConfig(num_latents=32, k=3, normalization="none"))
    with torch.no_grad():
        sae.W_enc[5:] = 0
        sae.b_enc[5:] = -1  # latents 5.. can never fire
    res = evaluate(sae, reader, max_tokens=512)
    assert res["dead_fraction"] >= 27 / 32 and res["l0"] <= 3
    assert abs(res["fvu_residual"] - res["fvu_input_space"]) < 1e-6  # no normalisation: same space
    assert res["input_space"] == res["loss_space"] == "residual"


def test_accumulator_counts_l0_and_dead_latents_on_planted_codes():
    """6 tokens, 4 latents, k 2: a zero value is an inactive slot (it neither counts in L0 nor keeps a latent
    alive); latent 3 only ever appears with value 0, so it is dead."""
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    indices = torch.tensor([[0, 1], [0, 3], [1, 2], [2, 3], [0, 1], [0, 3]])
    values = torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.0], [0.0, 0.0], [3.0, 0.0]])
    acc = MetricAccumulator(3, 4)
    acc.update(x[:4], x[:4], indices[:4], values[:4])
    acc.update(x[4:], x[4:], indices[4:], values[4:])
    res = acc.result()
    assert res["l0"] == 7 / 6 and res["dead_fraction"] == 0.25 and res["tokens"] == 6 and res["fvu"] == 0


class _Silent(Dictionary):
    """Never fires: its reconstruction is the normaliser's mean."""

    kind = "silent"

    def __init__(self, normalizer: Normalizer):
        super().__init__(normalizer.dim, normalizer)

    @property
    def num_latents(self) -> int:
        return 5

    def encode_normalized(self, z_BD):
        return SparseCodes(z_BD.new_zeros(z_BD.shape[0], 1), torch.zeros(z_BD.shape[0], 1, dtype=torch.long))

    def decode_normalized(self, codes):
        return codes.values.new_zeros(codes.values.shape[0], self.d_in)


def test_evaluate_gives_fvu_0_for_a_lossless_dictionary_and_1_for_the_mean():
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(4)) * torch.arange(1, 7) + 3
    exact = evaluate(NeuronBasis(6), TensorReader(x))
    assert exact["fvu_residual"] < 1e-10 and exact["fvu_input_space"] < 1e-10 and exact["variance_explained"] > 1 - 1e-10
    assert exact["l0"] == 6 and exact["dead_fraction"] == 0 and exact["tokens"] == 400
    mean = evaluate(_Silent(Normalizer.fit([x], 6, "standardise")), TensorReader(x))
    assert mean["fvu_residual"] == pytest.approx(1, abs=1e-6) and mean["fvu_input_space"] == pytest.approx(1, abs=1e-6)
    assert mean["l0"] == 0 and mean["dead_fraction"] == 1
    assert mean["input_space"] == mean["loss_space"] == "standardised"


def test_evaluate_refuses_other_widths_and_a_dictionary_without_a_store():
    with pytest.raises(ValueError, match="width 6 but the dictionary expects width 4"):
        evaluate(NeuronBasis(4), TensorReader(torch.ones(10, 6)))
    with pytest.raises(ValueError, match="store of dictionary .* is not recorded"):
        evaluate(NeuronBasis(4))


def test_auto_split_is_the_held_out_rows_of_the_training_store_and_all_rows_of_another(split_store, eval_run, tmp_path):
    from stores import SITE, make_site_store, synthetic_acts

    sae = load_dictionary(eval_run / "a_deep")
    own = evaluate(sae, max_tokens=10_000)
    assert (own["split"], own["in_sample"]) == ("held-out", False) and own["tokens"] == 16 * 16  # 16 held-out images
    seen = evaluate(sae, split="all", max_tokens=10_000)
    assert (seen["split"], seen["in_sample"]) == ("all", True) and seen["tokens"] == 64 * 16
    assert seen["fvu_residual"] < own["fvu_residual"] < 1  # trained rows reconstruct better than unseen ones
    other = make_site_store(tmp_path / "other", {SITE: synthetic_acts(8, 16, 7)}, prompts_hash="other prompts")
    elsewhere = evaluate(sae, other)
    assert (elsewhere["split"], elsewhere["in_sample"]) == ("all", False)
    assert eval_split(sae, dl.open_store(split_store), "train") == "train"  # an explicit split is kept


def test_loss_space_and_table():
    sae = TopKSAE(4, SAEConfig(num_latents=8, k=2, normalization="pca"))
    assert loss_space(sae) == "pca-whitened"
    sae.meta["train"] = {"loss_space": "residual"}
    assert loss_space(sae) == "residual"
    table = format_table([{"name": "a", "fvu": 0.123456, "n": 12}, {"name": "longer", "fvu": None}],
                         ["name", "fvu", "n"])
    assert table.splitlines() == ["name    fvu     n ", "a       0.1235  12", "longer  None      "]
    assert format_table([], ["a", "bb"]) == "a  bb"
