"""ITDA: batched gradient pursuit vs a slow reference, growth, thresholds, provenance."""

import torch

from difflens.dictionaries import ITDA, ITDAConfig, gradient_pursuit
from difflens.dictionaries.itda import relative_loss
from difflens.store.sources import TensorReader
from difflens.dictionaries.train import ITDATrainConfig, RunConfig, train_itda


def slow_pursuit(x_N, atoms_MN, k):
    """Textbook non-negative gradient pursuit for one vector, dense coefficients over all atoms."""
    M = atoms_MN.shape[0]
    coef = torch.zeros(M, dtype=torch.float64)
    D = atoms_MN.double()
    x = x_N.double()
    support: list[int] = []
    for _ in range(min(k, M)):
        r = x - coef @ D
        corr = D @ r
        masked = corr.clone()
        masked[support] = float("-inf")
        support.append(int(masked.argmax()))
        g = torch.zeros(M, dtype=torch.float64)
        g[support] = corr[support]
        c = g @ D
        a = (c @ r) / (c @ c)
        coef = (coef + a * g).clamp_min(0)
    return coef


def test_pursuit_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(40, 12, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    x = torch.randn(16, 12, generator=g)
    codes = gradient_pursuit(x.double(), atoms.double(), 6)
    dense = codes.to_dense(40)
    for b in range(16):
        torch.testing.assert_close(dense[b], slow_pursuit(x[b], atoms, 6), rtol=1e-9, atol=1e-9)


def _synthetic(n=3000, dim=24, n_atoms=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n_atoms, dim, generator=g)
    true /= true.norm(dim=1, keepdim=True)
    which = torch.randint(0, n_atoms, (n, 2), generator=g)
    scale = torch.rand(n, 2, generator=g) + 0.5
    scale[: n // 2, 1] = 0.0  # half the tokens are a single (scaled) atom
    x = (true[which] * scale[..., None]).sum(1)
    x = x[torch.randperm(n, generator=g)]
    return x, true


def _train(x, tmp_path, threshold, name):
    trace = {"image_id": torch.arange(len(x)) // 100, "token_row": (torch.arange(len(x)) % 100) // 10,
             "token_col": torch.arange(len(x)) % 10, "step": torch.zeros(len(x))}
    reader = TensorReader(x, trace)
    cfg = ITDATrainConfig(k=4, threshold=threshold, max_atoms=500, max_add_per_batch=64, prune_cos=0.99,
                          normalization="none", batch_size=256, num_tokens=len(x))
    run = RunConfig(out=str(tmp_path / name), progress=False, checkpoint_every=0)
    return train_itda(reader, cfg, run, site=name), reader


def test_itda_recovers_known_atoms_and_provenance(tmp_path):
    x, true = _synthetic()
    itda, reader = _train(x, tmp_path, 0.05, "a")
    best = (true @ itda.atoms.T).max(1).values
    assert (best > 0.999).all(), best
    recon = itda.reconstruct(x)[0]
    assert float(relative_loss(x, recon).mean()) < 0.05
    # provenance: each atom is the normalised activation of the token it names
    rows = itda.provenance["row_id"]
    src = reader.read_rows(rows)
    torch.testing.assert_close(itda.atoms, src / src.norm(dim=1, keepdim=True))
    assert (itda.provenance["image_id"] == rows // 100).all()
    assert (itda.provenance["token_col"] == rows % 10).all()


def test_threshold_controls_growth(tmp_path):
    x, _ = _synthetic()
    sizes = [_train(x, tmp_path, t, f"t{t}")[0].size for t in (0.01, 0.2, 0.6, 1.0)]
    assert sizes[0] >= sizes[1] >= sizes[2] >= sizes[3]
    assert sizes[0] > sizes[2]
    assert sizes[3] == 1  # per-token loss never exceeds 1: only the seed atom


def test_caps_and_pruning():
    itda = ITDA(8, ITDAConfig(k=2, threshold=0.1, max_atoms=5, max_add_per_batch=3, prune_cos=0.9, normalization="none"))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 8, generator=g)
    z[1] = z[0] * 2  # duplicate direction of row 0
    chosen = itda.select_new_atoms(z, torch.ones(10))
    assert len(chosen) == 3 and not ({0, 1} <= set(chosen.tolist()))
    itda.add_atoms(torch.randn(7, 8, generator=g), {})
    assert itda.size == 5
    itda.cfg.max_atoms = 10
    itda.add_atoms(itda.atoms[:2] + 1e-4, {})
    assert itda.prune(0.99) == 2 and itda.size == 5
