"""Ground truth for a dictionary's latents in the embedded shapes world: which concept does each latent detect,
how precisely, and how does that compare with controls that had no chance to learn it?

Concepts and token labels come from `labels.py` (the oracle's reading of each generated image); concepts are
coarse (what kind of token) or specific (`labels.concept_kind`). For one dictionary at its (site, step) of an
activation store with a held-out split, every choice is made on the **train** images and measured on the
**held-out** images (the per-latent statistics and their rules: `truth_stats`):

* **Headline, precise share**: the share of alive latents whose upper range (activation > ½ of the latent's
  train max) is ≥ 90 % precise for one specific concept at ≥ 2× its base rate (``HEADLINE_DEFINITION``).
* Specificity by activation level (deciles of the max), precision at any activation, the precise match with
  coarse concepts allowed, average precision (share with AP ≥ ``GROUNDED_AP``: saev's "grounded" rule).
* F1 match (recall-sensitive, kept as a secondary column): per (latent, concept) the level with the best train
  F1; ``explained_share`` = share of alive latents whose held-out F1 ≥ 0.5. Also precision, recall, token AUROC
  (level histograms; ties half), image AUROC (the latent's max over an image vs the concept's presence), IoU.
* Per concept: the single latent of best train F1 (``coverage``), the OR of every latent precise for it on train
  (``union_coverage``: recall, precision, F1, how many latents share it), absorption (concept tokens where all
  those latents stay silent while a latent aligned with the concept's probe fires), the alignment of the
  concept's probe direction with the best latent direction, and the ceiling: a logistic-regression probe (L2
  ``PROBE_L2``, standardised inputs, threshold of best train F1) on the raw site activations.
* Sparse probing (as SAEBench): per concept, the top 1 / 4 / 16 features by standardised mean difference, then
  a logistic probe on those features alone (the dictionary's latents, the random directions, the raw dimensions).
* Controls, measured with the same passes and rules: ``random`` (as many unit directions, the same k, in the
  dictionary's normalised input space; codes = ReLU(top-k of projections of the input minus its train mean)) and
  ``init`` (the dictionary before training, for SAEs). The random-*model* control is a dictionary trained on a
  ``--control random-init`` capture, reported the same way (`truth_study`).
* Uncertainty: bootstrap intervals over held-out images for the precise and F1 shares.
* With an autointerp summary and its index: a perfect judge's detection score on autointerp's own test examples.

Concepts are scored when they have at least ``MIN_SCORED_POSITIVES`` positive tokens in both splits. Latent
statistics stream over the store's rows; probes use up to ``max_probe_tokens`` tokens per split (whole images,
picked at random with `random_seed`). Every field of truth.json: docs/truth.md.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from difflens.atomic import atomic_write_json
from difflens.locks import locks_output
from difflens.outputs import previous_output, same_settings
from difflens.dictionaries.base import Dictionary, SparseCodes
from difflens.store.run_layout import relative_link

from .labels import TokenLabels, concept_kind, token_labels
from .truth_stats import (BANDS, LEVELS, MIN_HELDOUT_FIRES, MIN_TRAIN_FIRES, NARROWER, PRECISE_LIFT,
                          PRECISE_PRECISION, UPPER_LEVEL, LatentConceptStats, f1_score, latent_ranges, level_of,
                          precise_for)

EXPLAINED_F1 = 0.5  # a latent is "explained" when its best concept's held-out F1 reaches this
MIN_SCORED_POSITIVES = 8  # positive tokens a concept needs in each split to be scored
SPARSE_PROBE_SIZES = (1, 4, 16)
FAMILY_COVERAGE_BAR = 0.7  # a concept is covered when its best latent's held-out F1 is >= this x the probe's
PROBE_L2 = 1e-4  # L2 penalty on probe weights (per token-mean logistic loss, standardised inputs)
PROBE_ITERS = 200  # L-BFGS iterations per probe fit
GROUNDED_AP = 0.3  # a latent is "grounded" when its best specific concept's held-out AP reaches this (saev)
ABSORB_COSINE = 0.3  # a latent absorbs a concept when its direction has this cosine with the concept's probe
RANDOM_SEED_OFFSET = 7919  # the random floor's seed is random_seed + this (see truth_report)
BOOTSTRAP_SAMPLES = 200  # resamples of the held-out images for intervals

HEADLINE_DEFINITION = (f"precise share: alive latents whose activations above {UPPER_LEVEL / LEVELS:g} x their train max "
                       f"are >= {PRECISE_PRECISION:.0%} precise for one specific concept on held-out images, at >= "
                       f"{PRECISE_LIFT:g}x its base rate and on >= {MIN_HELDOUT_FIRES} tokens (concept: the narrowest "
                       f"one precise on train)")
RULES = {
    "headline": HEADLINE_DEFINITION,
    "levels": f"{LEVELS} levels of the latent's train max; bands are deciles of it; level j fires when a > j/{LEVELS} x max",
    "precise_on_train": f"precision >= {PRECISE_PRECISION} and >= {PRECISE_LIFT}x base rate on >= {MIN_TRAIN_FIRES} "
                        "train tokens in the upper range; concept = the narrowest specific one, a specific concept "
                        f"being allowed only when its base rate is <= {NARROWER}x that of every coarse concept the "
                        "latent is precise for; a latent precise for no allowed concept never counts (its concept is "
                        "then the allowed one of best train precision, reported only)",
    "f1_match": f"per (latent, concept): best train F1 over the {LEVELS} levels; concept = best train F1; "
                "measured on held-out images (recall-sensitive)",
    "ap": f"average precision of the activation ranking (ties within a level together); concept = best train AP "
          f"among specific ones; grounded when held-out AP >= {GROUNDED_AP}",
    "union_coverage": "per concept: OR of every latent precise for it on train, each firing in its upper range",
    "absorption": f"concept tokens where every latent precise for it is silent while a latent with cosine >= "
                  f"{ABSORB_COSINE} to the concept's probe direction fires (share of the concept's tokens)",
    "random_floor": "same count and k; unit directions in the dictionary's normalised input space; "
                    "ReLU(top-k of projections of the input minus its train mean)",
    "init_control": "the same architecture, normaliser and seed before any training step (SAEs)",
    "probe_ceiling": f"logistic regression (L2 {PROBE_L2}) on standardised raw site activations, threshold = best "
                     "train F1",
    "sparse_probing": "top-n features by |mean(pos) - mean(neg)| / std on train tokens, then a logistic probe",
    "iou": "mean over held-out images where the thresholded map or the concept mask is non-empty",
    "intervals": f"95 % basic bootstrap interval [2e - q97.5, 2e - q2.5] from a Bayesian bootstrap over held-out "
                 f"images ({BOOTSTRAP_SAMPLES} Dirichlet reweightings; train choices and each latent's support fixed); "
                 "a share of latents passing a bar is biased upward on a finite held-out set, so the interval (and "
                 "the bias-corrected estimate 2e - median) can lie below the estimate",
    "scored_concepts": f">= {MIN_SCORED_POSITIVES} positive tokens in each split",
}

_BASELINES: dict[tuple, tuple] = {}  # dictionary-independent probes of recent calls (see truth_report)


class RandomDirections(Dictionary):
    """The random floor: F random unit directions in a dictionary's input space; codes = ReLU(top-k of projections).

    Decoding sums the active directions (they are not a basis: the reconstruction is one only in name).
    """

    kind = "random"

    def __init__(self, d_in: int, num_latents: int, k: int, normalizer=None, *, seed: int = 0,
                 center_D: Tensor | None = None):
        super().__init__(d_in, normalizer)
        gen = torch.Generator().manual_seed(int(seed))
        W_FD = torch.randn(num_latents, d_in, generator=gen)
        self.register_buffer("directions", W_FD / W_FD.norm(dim=1, keepdim=True))
        self.register_buffer("center", torch.zeros(d_in) if center_D is None else center_D.detach().float().clone())
        self.k = int(min(k, num_latents))

    @classmethod
    def like(cls, dictionary: Dictionary, *, seed: int = 0, center_D: Tensor | None = None,
             k: int | None = None) -> "RandomDirections":
        """As many directions as `dictionary` has latents, its k, a copy of its normaliser."""
        return cls(dictionary.d_in, dictionary.num_latents, k or sparsity_k(dictionary),
                   copy.deepcopy(dictionary.normalizer).cpu(), seed=seed, center_D=center_D)

    @property
    def num_latents(self) -> int:
        return self.directions.shape[0]

    def encode_normalized(self, z_BD: Tensor) -> SparseCodes:
        proj_BF = (z_BD - self.center) @ self.directions.t()
        vals, idx = proj_BF.topk(self.k, dim=-1)
        return SparseCodes(vals.clamp_min(0), idx)

    def decode_normalized(self, codes: SparseCodes) -> Tensor:
        return codes.to_dense(self.num_latents) @ self.directions + self.center

    def decoder_rows(self) -> Tensor:
        return self.directions


def random_floor(dictionary: Dictionary, store=None, *, seed: int = 0, max_tokens: int = 1 << 20,
                 center_D: Tensor | None = None) -> RandomDirections:
    """The random-direction control of `dictionary` as a dictionary of its own (site, step and store copied), centred
    on `center_D` (default: the normalised mean of up to `max_tokens` train rows): what `truth_report` measures as
    "random", and what stages that need the control as an object index and explain (the autointerp floor)."""
    if center_D is None:
        from difflens.store.sources import open_store

        store = open_store(store or dictionary.locate_store())
        reader = store.reader(dictionary.site, dictionary.step, "train")
        total, n = torch.zeros(reader.dim, dtype=torch.float64), 0
        for acts, _ in reader.iter_batches(8192, shuffle=False):
            total += acts.double().sum(0)
            n += acts.shape[0]
            if n >= max_tokens:
                break
        device = next(dictionary.parameters(), torch.zeros(0)).device
        center_D = dictionary.normalizer.normalize((total / max(n, 1)).float()[None].to(device))[0].cpu()
    # offset: a TopK SAE starts from unit random directions drawn with its training seed (often 0 too), and the
    # random floor should not be the untrained control again
    floor = RandomDirections.like(dictionary, seed=seed + RANDOM_SEED_OFFSET, center_D=center_D)
    floor.meta = {k: v for k, v in dictionary.meta.items() if k in ("site", "step", "store")}
    return floor


def sparsity_k(dictionary: Dictionary) -> int:
    """The dictionary's active latents per token (k); all latents when it has none (dense neurons)."""
    for k in (getattr(dictionary, "k", None), getattr(getattr(dictionary, "cfg", None), "k", None),
              dictionary.meta.get("k")):
        if k:
            return int(k)
    return dictionary.num_latents


# ---------------------------------------------------------------------------------------------------------------
# metrics on explicit scores (probes, image level) and on binned counts (latents, token level)

def auroc(scores_NG, labels_NG) -> np.ndarray:
    """(G,) AUROC of each column of scores against boolean labels (ties count half); NaN where a class is empty."""
    s = np.asarray(scores_NG, dtype=np.float64)
    y = np.asarray(labels_NG, dtype=bool)
    if s.ndim == 1:
        return auroc(s[:, None], y[:, None])
    ranks = rankdata(s, axis=0)
    pos = y.sum(0).astype(np.float64)
    neg = y.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * y).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), out, np.nan)


def best_f1_threshold(scores_NG: Tensor, labels_NG: Tensor) -> tuple[Tensor, Tensor]:
    """Per column, the threshold t maximising F1 of "score > t" on these tokens: (t (G,), best F1 (G,))."""
    s = scores_NG.double()
    order = s.argsort(dim=0, descending=True)
    s_sorted = s.gather(0, order)
    tp = labels_NG.double().gather(0, order).cumsum(0)
    n = s.shape[0]
    fired = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    f1 = 2 * tp / (fired + tp[-1:]).clamp_min(1)
    cut_ok = torch.ones_like(f1, dtype=torch.bool)
    cut_ok[:-1] = s_sorted[:-1] != s_sorted[1:]  # a threshold can only fall between distinct scores
    f1 = torch.where(cut_ok, f1, torch.full_like(f1, -1.0))
    best, i = f1.max(0)
    nxt = s_sorted.gather(0, (i + 1).clamp_max(n - 1)[None])[0]
    here = s_sorted.gather(0, i[None])[0]
    thr = torch.where(i < n - 1, (here + nxt) / 2, here - 1.0)
    return thr, best.clamp_min(0)


def scores_at(scores_NG: Tensor, labels_NG: Tensor, thr_G: Tensor) -> dict[str, np.ndarray]:
    """{"f1", "precision", "recall"} (G,) of "score > threshold" against boolean labels."""
    fires = scores_NG.double() > thr_G.double()[None]
    y = labels_NG.bool()
    tp = (fires & y).sum(0).numpy()
    fired, pos = fires.sum(0).numpy(), y.sum(0).numpy()
    return {"f1": f1_score(tp, fired, pos), "precision": np.where(fired > 0, tp / np.maximum(fired, 1), 0.0),
            "recall": np.where(pos > 0, tp / np.maximum(pos, 1), 0.0)}


# ---------------------------------------------------------------------------------------------------------------
# logistic probes

def fit_logistic(X: Tensor, Y: Tensor, *, l2: float = PROBE_L2, max_iter: int = PROBE_ITERS) -> tuple[Tensor, Tensor]:
    """Logistic regressions by L-BFGS. X (N, d) with Y (N, G): G probes on shared inputs, W (d, G);
    or X (G, N, d) with Y (G, N): one probe per group on its own inputs, W (G, d, 1). Returns (W, b (G,))."""
    shared = X.ndim == 2
    X = X.float()
    Yf = Y.float()
    n, d = X.shape[-2], X.shape[-1]
    G = Y.shape[1] if shared else Y.shape[0]
    W = torch.zeros((d, G) if shared else (G, d, 1), requires_grad=True)
    prior = Yf.mean(0 if shared else 1).clamp(1e-4, 1 - 1e-4)
    b = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        logits = logistic_scores(X, W, b)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Yf, reduction="sum") / n
        loss = loss + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def fit_logistic_newton(X_GNd: Tensor, Y_GN: Tensor, *, l2: float = PROBE_L2, max_iter: int = 30,
                        tol: float = 1e-5) -> tuple[Tensor, Tensor]:
    """One logistic regression per group on its own few inputs, by damped Newton steps (exact, fast for d ≤ ~32).

    X (G, N, d), Y (G, N) -> (W (G, d, 1), b (G,)), the same model and loss as `fit_logistic`. The token sums run
    in float32, the weights and the Newton solve in float64."""
    X = X_GNd.float()
    G, n, d = X.shape
    Y = Y_GN.float()
    Xa = torch.cat([X, torch.ones(G, n, 1)], -1)  # bias as the last input
    w = torch.zeros(G, d + 1, dtype=torch.float64)
    prior = Y.mean(1).clamp(1e-4, 1 - 1e-4)
    w[:, -1] = torch.log(prior / (1 - prior))
    mask = torch.ones(d + 1, dtype=torch.float64)
    mask[-1] = 0.0  # the bias is not penalised

    def loss(w_):
        z = (Xa @ w_.float()[:, :, None])[..., 0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, Y, reduction="none").double().mean(1)
        return bce + 0.5 * l2 * (w_.pow(2) * mask).sum(1)

    current = loss(w)
    done = torch.zeros(G, dtype=torch.bool)
    for _ in range(max_iter):
        p = torch.sigmoid((Xa @ w.float()[:, :, None])[..., 0])
        grad = (Xa.transpose(1, 2) @ (p - Y)[..., None])[..., 0].double() / n + l2 * w * mask
        done |= grad.abs().amax(1) < tol
        if bool(done.all()):
            break
        H = (Xa * (p * (1 - p))[..., None]).transpose(1, 2) @ Xa
        H = H.double() / n + torch.diag_embed((l2 * mask + 1e-9).expand(G, -1))
        step = torch.where(done[:, None], torch.zeros_like(w), torch.linalg.solve(H, grad))
        t = torch.ones(G, dtype=torch.float64)
        for _ in range(12):  # halve each group's step until its loss does not rise (float32 sums: up to 1e-6)
            trial = w - t[:, None] * step
            new = loss(trial)
            ok = (new <= current + 1e-6 * current.abs()) | done
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        done |= ~ok  # no descent left at float32 precision: converged
        w = torch.where(ok[:, None], trial, w)
        current = torch.where(ok, new, current)
    return w[:, :-1, None], w[:, -1]


def logistic_scores(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Logits: (N, G) for shared inputs, (G, N) for per-group inputs (see `fit_logistic`)."""
    X, W, b = X.float(), W.float(), b.float()
    return X @ W + b if X.ndim == 2 else (X @ W).squeeze(-1) + b[:, None]


def _standardise(train: Tensor, *others: Tensor, dim: int = -2) -> list[Tensor]:
    mean = train.mean(dim, keepdim=True)
    std = train.std(dim, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def probe_ceiling(X_train: Tensor, Y_train: Tensor, X_held: Tensor, Y_held: Tensor) -> dict[str, np.ndarray]:
    """Per concept, a logistic probe on all dimensions: held-out {"f1", "precision", "recall", "auroc"} (C,), and
    "direction" (C, D): each probe's unit weight direction in the raw activation space."""
    Xt, Xh = _standardise(X_train.double(), X_held.double())
    W, b = fit_logistic(Xt, Y_train)
    thr, _ = best_f1_threshold(logistic_scores(Xt, W, b), Y_train)
    held = logistic_scores(Xh, W, b)
    raw = (W.double() / X_train.double().std(0).clamp_min(1e-6)[:, None]).t()
    direction = (raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    return {**scores_at(held, Y_held, thr), "auroc": auroc(held.numpy(), Y_held.numpy()), "direction": direction}


class ProbeFeatures:
    """A token × feature matrix for sparse probing: dense (raw dims) or sparse codes (N, K) (latents)."""

    def __init__(self, dense_ND: Tensor | None = None, codes: SparseCodes | None = None, num_features: int = 0):
        if dense_ND is not None:
            self.dense, self.sparse, self.F = dense_ND.double(), None, dense_ND.shape[1]
        else:
            n, k = codes.values.shape
            rows = torch.arange(n).repeat_interleave(k)
            idx = torch.stack([rows, codes.indices.reshape(-1).long()])
            self.dense, self.F = None, num_features
            self.sparse = torch.sparse_coo_tensor(idx, codes.values.reshape(-1).double(), (n, num_features),
                                                  check_invariants=True).coalesce()

    def t_matmul(self, Y_NC: Tensor) -> Tensor:
        """(F, C) = featuresᵀ @ Y."""
        Y = Y_NC.double()
        return self.dense.t() @ Y if self.sparse is None else torch.sparse.mm(self.sparse.t(), Y)

    def moments(self) -> tuple[Tensor, Tensor, int]:
        """(Σ x (F,), Σ x² (F,), N)."""
        if self.sparse is None:
            return self.dense.sum(0), self.dense.pow(2).sum(0), self.dense.shape[0]
        ones = torch.ones(self.sparse.shape[0], 1, dtype=torch.float64)
        sq = torch.sparse_coo_tensor(self.sparse.indices(), self.sparse.values().pow(2), self.sparse.shape,
                                     check_invariants=False)
        return (torch.sparse.mm(self.sparse.t(), ones)[:, 0], torch.sparse.mm(sq.t(), ones)[:, 0], self.sparse.shape[0])

    def columns(self, sel: Tensor) -> Tensor:
        """(N, len(sel)) dense float32 columns (`sel` may repeat a feature)."""
        if self.sparse is None:
            return self.dense[:, sel].float()
        unique, inverse = sel.unique(return_inverse=True)
        slot_F = torch.full((self.F,), -1, dtype=torch.long)
        slot_F[unique] = torch.arange(len(unique))
        (rows, feats), vals = self.sparse.indices(), self.sparse.values()
        slot = slot_F[feats]
        keep = slot >= 0
        out = torch.zeros(self.sparse.shape[0], len(unique))
        out[rows[keep], slot[keep]] = vals[keep].float()
        return out[:, inverse]


def mean_difference_ranking(feats: ProbeFeatures, Y_NC: Tensor) -> Tensor:
    """(F, C) standardised mean difference |mean(x | y) - mean(x | not y)| / std(x) of every feature and concept."""
    S_FC = feats.t_matmul(Y_NC)
    s_F, q_F, n = feats.moments()
    pos = Y_NC.double().sum(0)
    mu_pos = S_FC / pos.clamp_min(1)
    mu_neg = (s_F[:, None] - S_FC) / (n - pos).clamp_min(1)
    std = (q_F / n - (s_F / n) ** 2).clamp_min(0).sqrt()
    d = (mu_pos - mu_neg).abs() / std[:, None].clamp_min(1e-12)
    return torch.where(std[:, None] > 1e-12, d, torch.zeros_like(d))


def sparse_probes(train: ProbeFeatures, held: ProbeFeatures, Y_train: Tensor, Y_held: Tensor, sizes,
                  chunk: int = 16) -> dict[str, np.ndarray]:
    """Per size n: held-out F1 (C,) of per-concept logistic probes on the n features ranked first by mean
    difference. The ranking is one per concept, so a smaller probe's features are a prefix of a larger one's:
    the columns are gathered and standardised once, at the largest size."""
    out = {str(n): np.zeros(Y_train.shape[1]) for n in sizes}
    if not out:
        return out
    top = min(max(int(n) for n in sizes), train.F)
    sel_CS = mean_difference_ranking(train, Y_train).topk(top, dim=0).indices.t()  # (C, top), best first
    for lo in range(0, Y_train.shape[1], chunk):
        sel = sel_CS[lo: lo + chunk]
        g = sel.shape[0]
        Xt = train.columns(sel.reshape(-1)).reshape(-1, g, top).permute(1, 0, 2)  # (g, N, top)
        Xh = held.columns(sel.reshape(-1)).reshape(-1, g, top).permute(1, 0, 2)
        Xt, Xh = _standardise(Xt, Xh)
        yt, yh = Y_train[:, lo: lo + g].t(), Y_held[:, lo: lo + g].t()
        for n in sizes:
            m = min(int(n), top)
            W, b = fit_logistic_newton(Xt[..., :m], yt)
            thr, _ = best_f1_threshold(logistic_scores(Xt[..., :m], W, b).t(), yt.t())
            out[str(n)][lo: lo + g] = scores_at(logistic_scores(Xh[..., :m], W, b).t(), yh.t(), thr)["f1"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# the report

def _rows(reader, labels: TokenLabels, cols: np.ndarray, images: np.ndarray, batch_size: int):
    """(acts_BD, labels_BC bool, image_id_B) of the rows of `images` (sorted ids) in row order."""
    for acts, ids in reader.iter_batches(batch_size, shuffle=False):
        tr = reader.trace(ids)
        img, tok = tr["image_id"], tr["token_index"]
        keep = np.isin(img, images)
        if not keep.any():
            continue
        if not keep.all():
            acts, img, tok = acts[torch.from_numpy(keep)], img[keep], tok[keep]
        yield acts, torch.from_numpy(labels.rows(img, tok)[:, cols]), img


def _pick_images(images: np.ndarray, tokens_per_image: int, max_tokens: int, seed: int) -> np.ndarray:
    n = max(1, min(len(images), max_tokens // tokens_per_image))
    return np.sort(np.random.default_rng(seed).permutation(images)[:n])


def _r4(x) -> float | None:
    """A number as truth.json writes it: 4 decimals, NaN as null."""
    return _nan_to_none(round(float(x), 4))


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _mean(values) -> float | None:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return float(a.mean()) if a.size else None


def _encode(dictionary: Dictionary, acts: Tensor, device) -> SparseCodes:
    codes = dictionary.encode(acts.to(device))
    return SparseCodes(codes.values.float().cpu(), codes.indices.cpu())


def initial_dictionary(dictionary: Dictionary, center_D: Tensor | None = None,
                       rows_BD: Tensor | None = None) -> Dictionary | None:
    """The dictionary as its training started (same family, normaliser and seed; the decoder bias at
    `center_D`, the normalised train mean, as training sets it from its first batch): the untrained control. None
    for kinds without a random initialisation (ITDA, neurons, random directions). A threshold family (BatchTopK,
    Matryoshka on it, JumpReLU) gets the threshold that keeps k latents a token on average over `rows_BD`
    (train rows, residual space), so it has the dictionary's L0; without rows it keeps its initial threshold.

    For a TopK SAE initialised as here (unit random decoder rows, encoder = their transpose, zero encoder bias)
    this is exactly `RandomDirections` drawn with the training seed and centred on `center_D`: a second draw of
    the random-direction control, kept so that families with other initialisations get their own."""
    from difflens.dictionaries.sae_families import make_sae
    from difflens.dictionaries.topk_sae import TopKSAE

    if not isinstance(dictionary, TopKSAE):
        return None
    seed = int((dictionary.meta.get("train") or {}).get("seed", dictionary.meta.get("seed", 0)) or 0)
    init = make_sae(dictionary.d_in, dictionary.cfg, copy.deepcopy(dictionary.normalizer).cpu(), seed=seed)
    if center_D is not None:
        with torch.no_grad():
            init.b_dec.copy_(center_D)
    if rows_BD is not None and len(rows_BD):
        init.match_l0(init.normalizer.normalize(rows_BD.float().cpu()))
    init.meta = {k: v for k, v in dictionary.meta.items() if k in ("site", "step")}
    return init


def _latent_results(max_F: Tensor, specific_C: Tensor, train_batches, held_batches, n_held_images: int,
                    image_pos_IC: np.ndarray, big: bool) -> dict:
    """Train choices and held-out measures of every latent of one encoder (`truth_stats`) from its coded passes
    (`_coded`), latent range by range so that the (F, L, C) histograms stay within `HIST_BUDGET_BYTES`. Per-latent
    arrays (F, ...) and per-image arrays under "images" (name -> tuple of (I, F))."""
    ranges = latent_ranges(len(max_F), len(specific_C), big=big)
    if len(ranges) > 1:  # every range rereads the train codes: encode them once when they fit in memory
        train_batches = _cache_if_small(train_batches)
    parts = []
    for lo, hi in ranges:
        s = LatentConceptStats(max_F[lo:hi], len(specific_C), specific_C, lo=lo, big=big)
        for codes, lab, _ in train_batches():
            s.add(codes, lab)
        s.choose()
        s.start_heldout(n_held_images)
        for codes, lab, pos_B in held_batches():
            s.add(codes, lab, pos_B)
        r = s.result(image_pos_IC)
        r.update({"alive": s.alive_F.numpy(), "concept": s.concept_F.numpy(), "train_f1_FC": s.train_f1_FC.float().numpy(),
                  "level": s.level_F.numpy(), "step": s.step_F.numpy(), "precise_concept": s.precise_concept_F.numpy(),
                  "precise_any_concept": s.precise_any_concept_F.numpy(), "precise_FC": s.precise_FC.numpy(),
                  "ap_concept": s.ap_concept_F.numpy()})
        parts.append(r)
        del s
    out = {key: np.concatenate([p[key] for p in parts], 0) for key in parts[0] if key != "images"}
    out["images"] = {name: tuple(np.concatenate([p["images"][name][j] for p in parts], 1) for j in range(len(value)))
                     for name, value in parts[0]["images"].items()}
    return out


CODE_CACHE_BYTES = 2 << 30  # codes and labels of a pass kept in memory when several latent ranges reread them


def _coded(encoder: Dictionary, rows, device):
    """A pass over `rows` (a callable yielding (acts, labels, extra)) as (codes, labels, extra) batches."""
    def batches():
        for acts, lab, extra in rows():
            yield _encode(encoder, acts, device), lab, extra
    return batches


def _cache_if_small(batches):
    """`batches` materialised once when its codes and labels fit ``CODE_CACHE_BYTES``, else as it is."""
    kept, size = [], 0
    for item in batches():
        codes, lab, _ = item
        size += codes.values.numel() * 12 + lab.numel()
        if size > CODE_CACHE_BYTES:
            return batches
        kept.append(item)
    return lambda: iter(kept)


def _union_and_absorption(encoder: Dictionary, res: dict, probe_dir_CD: Tensor, held_batches) -> dict:
    """Per concept, on held-out tokens: the OR of every latent precise for it on train (each firing in its upper
    range) and the absorption rate (concept tokens where all those latents stay silent while an alive latent
    whose residual direction has cosine ≥ ``ABSORB_COSINE`` with the concept's probe direction fires)."""
    alive_F = torch.from_numpy(res["alive"]).bool()
    member_FC = torch.from_numpy(res["precise_FC"]).float() * alive_F[:, None]
    cos_FC = encoder.feature_directions().float().cpu() @ probe_dir_CD.t()
    cos_FC = torch.where(alive_F[:, None], cos_FC, torch.full_like(cos_FC, -1.0))  # the dead take no part
    absorber_FC = ((cos_FC >= ABSORB_COSINE) & (member_FC == 0)).float()
    step_F = torch.from_numpy(res["step"]).float()
    C = member_FC.shape[1]
    totals = {k: torch.zeros(C, dtype=torch.float64) for k in ("fired", "tp", "pos", "missed", "absorbed")}
    for codes, lab, _ in held_batches():
        b, k = (codes.values > 0).nonzero(as_tuple=True)
        f, v = codes.indices.long()[b, k], codes.values[b, k]
        up = level_of(v, step_F[f]) >= UPPER_LEVEL
        B = lab.shape[0]
        union = torch.zeros(B, C).index_add_(0, b[up], member_FC[f[up]]) > 0
        main = torch.zeros(B, C).index_add_(0, b, member_FC[f]) > 0
        absorb = torch.zeros(B, C).index_add_(0, b, absorber_FC[f]) > 0
        y = lab.bool()
        miss = y & ~main
        for key, m in (("fired", union), ("tp", union & y), ("pos", y), ("missed", miss), ("absorbed", miss & absorb)):
            totals[key] += m.sum(0).double()
    t = {k: v.numpy() for k, v in totals.items()}
    n_members = member_FC.sum(0).numpy()
    has = n_members > 0
    return {
        "latents": n_members.astype(int),
        "recall": np.where(has, t["tp"] / np.maximum(t["pos"], 1), 0.0),
        "precision": np.where(t["fired"] > 0, t["tp"] / np.maximum(t["fired"], 1), np.nan),
        "f1": np.where(has, f1_score(t["tp"], t["fired"], t["pos"]), 0.0),
        "absorption": np.where(has & (t["pos"] > 0), t["absorbed"] / np.maximum(t["pos"], 1), np.nan),
        "missed": np.where(has & (t["pos"] > 0), t["missed"] / np.maximum(t["pos"], 1), np.nan),
        "probe_alignment": cos_FC.amax(0).numpy() if alive_F.any() else np.full(C, np.nan),
    }


def bootstrap_shares(res: dict, image_pos_IC: np.ndarray, tokens_per_image: int, samples: int, seed: int) -> dict:
    """95 % intervals of the precise share and the F1 share from a Bayesian bootstrap over held-out images (Dirichlet
    weights; train choices and each latent's support fixed): the basic bootstrap interval [2e - q97.5, 2e - q2.5]
    and the bias-corrected estimate 2e - median. A share of latents passing a bar is biased upward on a finite
    held-out set (latents just below the bar pass by chance more often than those above it fail); the resamples
    measure that bias, so the interval can lie below the estimate."""
    alive = res["alive"].astype(bool)
    if samples <= 0 or not alive.any():
        return {}
    I = image_pos_IC.shape[0]
    W_SI = np.random.default_rng(seed).dirichlet(np.ones(I), size=samples) * I
    pos_SC = W_SI @ image_pos_IC
    fire, tp = (W_SI @ a for a in res["images"]["upper"])
    base = pos_SC[:, res["precise_concept"]] / (W_SI.sum(1, keepdims=True) * tokens_per_image)
    precision = np.where(fire > 0, tp / np.maximum(fire, 1), 0.0)
    counts = alive & res["found"] & (res["upper_fires"] >= MIN_HELDOUT_FIRES)  # support from the real images
    precise = counts & precise_for(precision, fire, base, 0)
    fire1, tp1 = (W_SI @ a for a in res["images"]["f1"])
    f1 = f1_score(tp1, fire1, pos_SC[:, res["concept"]])
    n = alive.sum()
    out = {}
    for name, shares_S, estimate in (
            ("precise_share", precise.sum(1) / n, (alive & res["precise"]).sum() / n),
            ("f1_share", (alive & (f1 >= EXPLAINED_F1)).sum(1) / n, (alive & (res["f1"] >= EXPLAINED_F1)).sum() / n)):
        lo, mid, hi = np.percentile(shares_S, [2.5, 50, 97.5])
        out[name] = [float(np.clip(2 * estimate - hi, 0.0, 1.0)), float(np.clip(2 * estimate - lo, 0.0, 1.0))]
        out[f"{name}_bias_corrected"] = float(min(max(2 * estimate - mid, 0.0), 1.0))
    return out


def _shares(res: dict, union: dict, scored_specific: np.ndarray) -> dict:
    """One encoder's summary measures (the same for the dictionary and every control)."""
    alive = res["alive"].astype(bool)
    n = max(int(alive.sum()), 1)
    share = lambda m: float((alive & m).sum() / n)  # noqa: E731
    return {
        "alive": int(alive.sum()),
        "precise_share": share(res["precise"]),
        "precise_share_coarse": share(res["precise_any"]),
        "ap_share": share(res["ap"] >= GROUNDED_AP),
        "f1_share": share(res["f1"] >= EXPLAINED_F1),
        "mean_f1": _mean(res["f1"][alive]),
        "mean_union_f1": _mean(union["f1"][scored_specific]),
        "mean_union_recall": _mean(union["recall"][scored_specific]),
        "concepts_with_precise_latents": int((union["latents"][scored_specific] > 0).sum()),
        "mean_absorption": _mean(union["absorption"][scored_specific]),
        "mean_probe_alignment": _mean(union["probe_alignment"][scored_specific]),
        "mean_any_precision": _mean(res["any_precision"][alive]),  # over latents that fire on held-out images
        "mean_upper_precision": _mean(res["upper_precision"][alive]),
        # latents whose upper range fires on too few held-out tokens to be judged (they never count)
        "unsupported_share": share(res["upper_fires"] < MIN_HELDOUT_FIRES),
    }


@torch.no_grad()
def truth_report(dictionary, store=None, *, site: str | None = None, step: int | None = None,
                 max_train_images: int | None = None, random_seed: int = 0, max_probe_tokens: int = 32_768,
                 batch_size: int = 2048, labels: TokenLabels | None = None, device: str | torch.device = "cpu",
                 sparse_sizes=SPARSE_PROBE_SIZES, controls=("random", "init"), bootstrap: int = BOOTSTRAP_SAMPLES,
                 autointerp: dict | None = None, index=None) -> dict:
    """Ground-truth report of `dictionary` (object or folder) on `store` (default: the store it was trained on).

    Choices come from the train images (the first `max_train_images` of them if set); every measure is taken on
    the held-out images, for the dictionary and for each control in `controls` ("random": random directions,
    "init": the dictionary before training). A dictionary across steps is read at `step` (with one normaliser
    per step: that step's). With an `autointerp` summary and its `index`, the scored latents
    also get a perfect judge's detection score. Every field is described in docs/truth.md."""
    name, dictionary, store = _open_inputs(dictionary, store)
    sparse_sizes = _check_options(sparse_sizes, controls)
    data = _Data.open(dictionary, store, site, step, labels, batch_size)
    dictionary = dictionary.at_step(data.step).to(device).eval()  # across steps: the report's step's normaliser
    data.choose_images(max_train_images, max_probe_tokens, random_seed)
    # pass 0 (train): mean of the inputs (centres the random directions), the probe's train tokens
    center, n_train, Xt, Yt = data.train_mean_and_probe_tokens(dictionary, device)
    encoders = _encoders(dictionary, controls, center, random_seed, device, Xt)
    # pass A (train): each latent's max, the probe tokens' codes; then the held-out probe tokens and their codes
    max_F, train_codes = _train_maxima(encoders, data, sparse_sizes, device)
    Xh, Yh, held_codes = _held_probe_tokens(encoders, data, sparse_sizes, device)
    img_pos = data.image_positives()
    # probes: the ceiling (its directions for absorption and alignment) and sparse probes on the raw dimensions
    ceiling, raw_sparse = _baselines(data, Xt, Yt, Xh, Yh, sparse_sizes)
    # passes B and C per encoder: train choices, held-out measures, the union and absorption
    results, unions = _measure(encoders, data, max_F, img_pos, torch.from_numpy(ceiling["direction"]).float(), device)
    sparse = {k: _sparse_probing(train_codes[k], held_codes[k], enc.num_latents, Yt, Yh, sparse_sizes)
              for k, enc in (encoders.items() if sparse_sizes else ())}
    sparse["raw"] = raw_sparse
    coverage, coverage_latent = _coverage(results, len(data.concepts))
    detection = _detection(results["dictionary"], data, autointerp, index)
    summaries = {k: _shares(results[k], unions[k], data.specific) for k in encoders}
    for k in encoders:
        summaries[k]["intervals"] = bootstrap_shares(results[k], img_pos, data.T, bootstrap, random_seed)
    return _assemble(name, dictionary, data, results, unions, summaries, coverage, coverage_latent, ceiling, sparse,
                     sparse_sizes, detection, {"train": int(Xt.shape[0]), "held_out": int(Xh.shape[0])}, n_train,
                     int(img_pos.shape[0] * data.T))


def _open_inputs(dictionary, store) -> tuple[str, Dictionary, object]:
    """(name, dictionary, opened store): a dictionary folder is loaded; the store defaults to the dictionary's."""
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.sources import open_store

    name = None
    if isinstance(dictionary, (str, Path)):
        name = Path(dictionary).name
        dictionary = load_dictionary(dictionary)
    name = name or (Path(dictionary.path).name if getattr(dictionary, "path", None) else dictionary.kind)
    if store is None:
        store = dictionary.locate_store()
    if isinstance(store, (str, Path)):
        store = open_store(store)
    return name, dictionary, store


def _check_options(sparse_sizes, controls) -> tuple[int, ...]:
    """The sparse-probe sizes (deduplicated, positive); unknown controls are refused."""
    sparse_sizes = tuple(dict.fromkeys(int(n) for n in sparse_sizes))
    if any(n < 1 for n in sparse_sizes):
        raise ValueError(f"sparse probe sizes must be positive feature counts, got {list(sparse_sizes)}")
    unknown = set(controls) - {"random", "init"}
    if unknown:
        raise ValueError(f"unknown controls {sorted(unknown)}: choose from 'random', 'init'")
    return sparse_sizes


class _Data:
    """The store's train and held-out rows of one (site, step), with their token labels restricted to the scored
    concepts: what every pass of the report reads."""

    def __init__(self, store, site: str, step: int, train_r, held_r, labels: TokenLabels, batch_size: int):
        self.store, self.site, self.step, self.labels, self.batch_size = store, site, step, labels, batch_size
        self.train_r, self.held_r = train_r, held_r
        self.T = train_r.grid[0] * train_r.grid[1]

    @classmethod
    def open(cls, dictionary, store, site, step, labels, batch_size) -> "_Data":
        """Readers of the dictionary's (or the given) site and step, checked: an image stream of the dictionary's
        width, labels (computed and cached if not given) on its token grid."""
        site = site if site is not None else dictionary.site
        step = step if step is not None else dictionary.step
        if site is None or step is None:
            raise ValueError("pass site= and step= (the dictionary does not record them)")
        train_r = store.reader(site, step, "train")
        if train_r.stream != "image" or not train_r.grid:
            raise ValueError(f"site {site!r} is a {train_r.stream}-stream site: ground-truth labels exist only for image tokens")
        held_r = store.reader(site, step, "held-out")
        if train_r.dim != dictionary.d_in:
            raise ValueError(f"the activations have width {train_r.dim} but the dictionary expects width {dictionary.d_in}")
        labels = labels if labels is not None else token_labels(store, grid=train_r.grid)
        if tuple(labels.grid) != tuple(train_r.grid):
            raise ValueError(f"labels are for a {labels.grid} token grid but {site} has {train_r.grid}")
        return cls(store, site, step, train_r, held_r, labels, batch_size)

    def choose_images(self, max_train_images: int | None, max_probe_tokens: int, seed: int) -> None:
        """The train and held-out images, the concepts scored on them (enough positives in both) and the images
        whose tokens the probes see (at random, whole images)."""
        labels = self.labels
        train_images = self.train_r.image_ids()
        if max_train_images is not None:
            train_images = train_images[: int(max_train_images)]
        self.train_images, self.held_images = train_images, self.held_r.image_ids()
        pos_train, pos_held = labels.counts(self.train_images), labels.counts(self.held_images)
        self.scored = (pos_train >= MIN_SCORED_POSITIVES) & (pos_held >= MIN_SCORED_POSITIVES)
        self.cols = np.flatnonzero(self.scored)
        if not len(self.cols):
            raise ValueError("no concept has enough positive tokens in both the train and the held-out images")
        self.concepts = [labels.concepts[i] for i in self.cols]
        self.specific = np.array([concept_kind(c) == "specific" for c in self.concepts])
        self.probe_train_imgs = _pick_images(self.train_images, self.T, max_probe_tokens, seed)
        self.probe_held_imgs = _pick_images(self.held_images, self.T, max_probe_tokens, seed + 1)

    def train_rows(self):
        """(acts_BD, labels_BC, image_id_B) of the train images' rows."""
        return _rows(self.train_r, self.labels, self.cols, self.train_images, self.batch_size)

    def held_rows(self):
        """(acts_BD, labels_BC, image_id_B) of the held-out images' rows."""
        return _rows(self.held_r, self.labels, self.cols, self.held_images, self.batch_size)

    def held_rows_by_position(self):
        """As :meth:`held_rows`, each row's image as its position among the held-out images."""
        for acts, lab, img in self.held_rows():
            yield acts, lab, torch.from_numpy(np.searchsorted(self.held_images, img))

    @property
    def big(self) -> bool:
        """Whether a split has more rows than the exact statistics' int32 counters allow (`truth_stats`)."""
        return max(self.train_r.num_rows, self.held_r.num_rows) > 2**24

    def train_mean_and_probe_tokens(self, dictionary, device) -> tuple[Tensor, int, Tensor, Tensor]:
        """(the train inputs' mean in the dictionary's normalised space, train tokens, the probe's train tokens
        X (N, D) and labels Y (N, C))."""
        sum_D, n_train = torch.zeros(self.train_r.dim, dtype=torch.float64), 0
        probe_X, probe_Y = [], []
        for acts, lab, img in self.train_rows():
            sum_D += acts.double().sum(0)
            n_train += acts.shape[0]
            keep = torch.from_numpy(np.isin(img, self.probe_train_imgs))
            probe_X.append(acts[keep])
            probe_Y.append(lab[keep])
        center = dictionary.normalizer.normalize((sum_D / max(n_train, 1)).float()[None].to(device))[0].cpu()
        return center, n_train, torch.cat(probe_X), torch.cat(probe_Y)

    def image_positives(self) -> np.ndarray:
        """(I, C) float64: positive tokens of each scored concept in each held-out image."""
        held, cols = self.held_images, self.cols
        return np.concatenate([self.labels.dense(held[i: i + 256])[:, :, cols].sum(1)
                               for i in range(0, len(held), 256)]).astype(np.float64)


def _encoders(dictionary, controls, center: Tensor, seed: int, device, train_rows_BD: Tensor) -> dict[str, Dictionary]:
    """The dictionary and its controls: random directions centred on the train mean, the untrained dictionary
    (a threshold family's set to the dictionary's L0 on `train_rows_BD`)."""
    encoders = {"dictionary": dictionary}
    if "random" in controls:
        encoders["random"] = random_floor(dictionary, seed=seed, center_D=center).to(device)
    init = initial_dictionary(dictionary, center, train_rows_BD) if "init" in controls else None
    if init is not None:
        encoders["init"] = init.to(device)
    return encoders


def _train_maxima(encoders: dict, data: _Data, sparse_sizes, device) -> tuple[dict, dict]:
    """({encoder: (F,) max activation over the train tokens}, {encoder: codes of the probe's train tokens, in
    parts}; the codes only with sparse probes)."""
    max_F = {k: torch.zeros(e.num_latents) for k, e in encoders.items()}
    probe_codes: dict[str, list] = {k: [] for k in encoders}
    for acts, lab, img in data.train_rows():
        keep = torch.from_numpy(np.isin(img, data.probe_train_imgs))
        for k, enc in encoders.items():
            codes = _encode(enc, acts, device)
            v = codes.values.reshape(-1).clamp_min(0)
            max_F[k].scatter_reduce_(0, codes.indices.reshape(-1).long(), v, "amax")
            if sparse_sizes:
                probe_codes[k].append(SparseCodes(codes.values[keep], codes.indices[keep]))
    return max_F, probe_codes


def _held_probe_tokens(encoders: dict, data: _Data, sparse_sizes, device) -> tuple[Tensor, Tensor, dict]:
    """(the probe's held-out tokens X (N, D), their labels Y (N, C), {encoder: their codes, in parts}; the codes
    only with sparse probes)."""
    held_X, held_Y = [], []
    held_codes: dict[str, list] = {k: [] for k in encoders}
    for acts, lab, img in data.held_rows():
        keep = torch.from_numpy(np.isin(img, data.probe_held_imgs))
        held_X.append(acts[keep])
        held_Y.append(lab[keep])
        for k, enc in encoders.items() if sparse_sizes else ():
            codes = _encode(enc, acts, device)
            held_codes[k].append(SparseCodes(codes.values[keep], codes.indices[keep]))
    return torch.cat(held_X), torch.cat(held_Y), held_codes


def _baselines(data: _Data, Xt: Tensor, Yt: Tensor, Xh: Tensor, Yh: Tensor, sparse_sizes) -> tuple[dict, dict]:
    """(the probe ceiling, the raw-dimension sparse probes): they do not depend on the dictionary, so they are
    computed once per (store, site, step, probe images, concepts, sizes) in a process."""
    key = (str(Path(data.store.root).resolve()), data.site, int(data.step), data.probe_train_imgs.tobytes(),
           data.probe_held_imgs.tobytes(), tuple(data.concepts), tuple(sparse_sizes))
    if key not in _BASELINES:
        raw_t, raw_h = ProbeFeatures(dense_ND=Xt), ProbeFeatures(dense_ND=Xh)
        _BASELINES[key] = (probe_ceiling(Xt, Yt, Xh, Yh),
                           sparse_probes(raw_t, raw_h, Yt, Yh, sparse_sizes))
        while len(_BASELINES) > 4:
            _BASELINES.pop(next(iter(_BASELINES)))
    return _BASELINES[key]


def _measure(encoders: dict, data: _Data, max_F: dict, img_pos: np.ndarray, probe_dir_CD: Tensor,
             device) -> tuple[dict, dict]:
    """Per encoder, latent range by range: train choices and held-out measures, then the union and absorption
    (the held-out codes, encoded once, serve both)."""
    specific_C = torch.from_numpy(data.specific)
    results, unions = {}, {}
    for k, enc in encoders.items():
        held_batches = _cache_if_small(_coded(enc, data.held_rows_by_position, device))
        results[k] = _latent_results(max_F[k], specific_C, _coded(enc, data.train_rows, device), held_batches,
                                     len(data.held_images), img_pos, data.big)
        results[k]["image_auroc"] = auroc(results[k]["images"]["max"][0], img_pos[:, results[k]["concept"]] > 0)
        unions[k] = _union_and_absorption(enc, results[k], probe_dir_CD, held_batches)
    return results, unions


def _sparse_probing(train_parts: list, held_parts: list, num_latents: int, Yt: Tensor, Yh: Tensor,
                    sparse_sizes) -> dict:
    """One encoder's sparse probes, on the codes of the probe tokens."""
    ft = ProbeFeatures(codes=SparseCodes.cat(train_parts), num_features=num_latents)
    fh = ProbeFeatures(codes=SparseCodes.cat(held_parts), num_features=num_latents)
    return sparse_probes(ft, fh, Yt, Yh, sparse_sizes)


def _coverage(results: dict, C: int) -> tuple[dict, dict]:
    """Per encoder and concept: the held-out F1 of the single alive latent of best train F1, and that latent."""
    coverage, coverage_latent = {}, {}
    for k, r in results.items():
        train_f1 = np.where(r["alive"][:, None], r["train_f1_FC"], -1.0)
        best_F = train_f1.argmax(0)
        coverage[k] = r["f1_FC"][best_F, np.arange(C)]
        coverage_latent[k] = best_F
    return coverage, coverage_latent


def _detection(res: dict, data: _Data, autointerp: dict | None, index) -> dict:
    """A perfect judge's detection scores of the latents autointerp scored (alive ones), given its summary and
    index; {} without them."""
    if autointerp is None or index is None:
        return {}
    from .autointerp import truth_detection

    concepts = data.concepts
    wanted = {int(f): concepts[int(res["precise_concept"][int(f)])] for f, rec in autointerp.get("features", {}).items()
              if rec.get("status") == "ok" and res["alive"][int(f)]}
    return truth_detection(index, autointerp, wanted, labels=data.labels)


def _latent_rows(res: dict, concepts: list[str], detection: dict) -> list[dict]:
    """truth.json's "latents": one row per alive latent of the dictionary."""
    latents = []
    for f in np.flatnonzero(res["alive"].astype(bool)):
        c, cp, ca, cc = (concepts[int(res[k][f])] for k in ("concept", "precise_concept", "ap_concept",
                                                            "precise_any_concept"))
        row = {
            "latent": int(f), "concept": c,
            **{m: _r4(res[m][f]) for m in ("f1", "precision", "recall", "auroc", "image_auroc", "iou", "firing_rate")},
            "train_f1": _r4(res["train_f1_FC"][f, res["concept"][f]]),
            "threshold": round(float(res["level"][f] * res["step"][f]), 6),
            "precise_concept": cp, "precise": bool(res["precise"][f]),
            "upper_precision": _r4(res["upper_precision"][f]),
            "upper_lift": _r4(res["upper_precision"][f] / res["upper_base"][f]) if res["upper_base"][f] > 0 else None,
            "upper_fires": int(res["upper_fires"][f]), "upper_recall": _r4(res["upper_recall"][f]),
            "upper_base": _r4(res["upper_base"][f]),
            "any_precision": _r4(res["any_precision"][f]),
            "band_precision": [_r4(x) for x in res["band_precision"][f]],
            "band_fires": [int(x) for x in res["band_fires"][f]],
            "coarse_concept": cc, "precise_coarse": bool(res["precise_any"][f]),
            "ap_concept": ca, "ap": _r4(res["ap"][f]),
        }
        if int(f) in detection:
            row.update(detection[int(f)])
        latents.append(row)
    return latents


def _union_coverage(concepts: list[str], unions: dict, coverage: dict, ceiling: dict) -> dict:
    """truth.json's "union_coverage": per concept, the OR of the dictionary's latents precise for it, beside the
    single best latent and the probe ceiling."""
    u = unions["dictionary"]
    return {c: {"latents": int(u["latents"][i]), "recall": _r4(u["recall"][i]),
                "precision": _r4(u["precision"][i]), "f1": _r4(u["f1"][i]),
                "single_f1": _r4(coverage["dictionary"][i]), "probe_f1": _r4(ceiling["f1"][i]),
                "absorption": _r4(u["absorption"][i]), "missed": _r4(u["missed"][i]),
                "probe_alignment": _r4(u["probe_alignment"][i]),
                "probe_alignment_random": _r4(unions["random"]["probe_alignment"][i])
                if "random" in unions else None}
            for i, c in enumerate(concepts)}


def _assemble(name, dictionary, data: _Data, results, unions, summaries, coverage, coverage_latent, ceiling, sparse,
              sparse_sizes, detection, probe_tokens, n_train, n_held) -> dict:
    """truth.json's layout (docs/truth.md): one literal in the file's order, so it stays one function."""
    res = results["dictionary"]
    alive = res["alive"].astype(bool)
    concepts, labels, scored, specific = data.concepts, data.labels, data.scored, data.specific
    latents = _latent_rows(res, concepts, detection)
    d, rnd = summaries["dictionary"], summaries.get("random", {})
    ratio = {c: (float(coverage["dictionary"][i] / ceiling["f1"][i]) if ceiling["f1"][i] > 0 else None)
             for i, c in enumerate(concepts)}
    per_concept = lambda a: {c: _r4(a[i]) for i, c in enumerate(concepts)}  # noqa: E731
    named = Counter(concepts[int(res["concept"][f])] for f in np.flatnonzero(alive & (res["f1"] >= EXPLAINED_F1)))
    precise_named = Counter(concepts[int(res["precise_concept"][f])] for f in np.flatnonzero(res["precise"]))
    det = [r for r in latents if "detection_token" in r]
    return {
        "dictionary": name, "kind": dictionary.kind, "dictionary_path": str(dictionary.path) if dictionary.path else None,
        "site": data.site, "step": int(data.step), "store": str(data.store.root),
        "num_latents": int(dictionary.num_latents), "k": sparsity_k(dictionary),
        "headline": {"name": "precise_share", "definition": HEADLINE_DEFINITION, "value": d["precise_share"],
                     "interval": d["intervals"].get("precise_share"),
                     "bias_corrected": d["intervals"].get("precise_share_bias_corrected"),
                     **{k: summaries[k]["precise_share"] for k in summaries if k != "dictionary"},
                     **{f"{k}_interval": summaries[k]["intervals"].get("precise_share") for k in summaries
                        if k != "dictionary"}},
        "precise_share": d["precise_share"], "precise_share_random": rnd.get("precise_share"),
        "alive": d["alive"], "alive_random": rnd.get("alive"),
        "explained_share": d["f1_share"], "explained_share_random": rnd.get("f1_share"), "explained_f1": EXPLAINED_F1,
        "summary": summaries,
        "levels": {"unit": "fraction of the latent's max activation on train tokens", "levels": LEVELS,
                   "bands": [round(j / BANDS, 3) for j in range(BANDS + 1)], "upper": UPPER_LEVEL / LEVELS,
                   "precise": {"precision": PRECISE_PRECISION, "lift": PRECISE_LIFT, "train_fires": MIN_TRAIN_FIRES,
                               "held_out_fires": MIN_HELDOUT_FIRES}},
        "mean_coverage": _mean(coverage["dictionary"]), "mean_coverage_random": _mean(coverage.get("random", [])),
        "mean_probe_ceiling": _mean(ceiling["f1"]), "mean_coverage_ratio": _mean(list(ratio.values())),
        "coverage": per_concept(coverage["dictionary"]),
        "coverage_latent": {c: int(coverage_latent["dictionary"][i]) for i, c in enumerate(concepts)},
        "coverage_random": per_concept(coverage["random"]) if "random" in coverage else {},
        "union_coverage": _union_coverage(concepts, unions, coverage, ceiling),
        "probe_ceiling": per_concept(ceiling["f1"]),
        "probe_ceiling_auroc": per_concept(ceiling["auroc"]),
        "coverage_ratio": {c: (None if v is None else round(v, 4)) for c, v in ratio.items()},
        "family_coverage": family_coverage(ratio),
        "sparse_probing": {
            "sizes": list(sparse_sizes),
            **{src: {n: _mean(v) for n, v in by_n.items()} for src, by_n in sparse.items()},
            "per_concept": {src: {n: per_concept(v) for n, v in by_n.items()} for src, by_n in sparse.items()},
        },
        "latent_means": {k: {m: _mean(results[k][m][results[k]["alive"].astype(bool)])
                             for m in ("f1", "precision", "recall", "auroc", "image_auroc", "iou")} for k in results},
        "detection": {"latents": len(det),
                      "mean_token": _mean([r["detection_token"] for r in det]),
                      "mean_image": _mean([r["detection_image"] for r in det])} if det else None,
        "explained_by_concept": dict(named.most_common()),
        "precise_by_concept": dict(precise_named.most_common()),
        "concepts": concepts,
        "concepts_coarse": [c for c, s in zip(concepts, specific) if not s],
        "concepts_unscored": [c for i, c in enumerate(labels.concepts) if not scored[i]],
        "tokens": {"train": int(n_train), "held_out": int(n_held)},
        "images": {"train": int(len(data.train_images)), "held_out": int(len(data.held_images))},
        "probe_tokens": probe_tokens,
        "rules": RULES,
        "latents": latents,
    }


def family_coverage(ratio_by_concept: dict[str, float | None], bar: float = FAMILY_COVERAGE_BAR) -> dict[str, dict]:
    """Per concept family (the name before ':', e.g. colour, pattern, part): how many of its scored concepts have
    a single latent reaching `bar` x the probe ceiling's held-out F1, and the best such ratio."""
    families: dict[str, list[float]] = {}
    for concept, r in ratio_by_concept.items():
        families.setdefault(concept.split(":", 1)[0], []).append(r if r is not None else float("nan"))
    return {fam: {"concepts": len(rs), "covered": int(sum(r >= bar for r in rs if r == r)),
                  "best_ratio": _nan_to_none(round(max((r for r in rs if r == r), default=float("nan")), 4))}
            for fam, rs in sorted(families.items())}


def truth_settings(report: dict) -> dict:
    """What identifies a report (which dictionary, where, which controls), to refuse replacing another's."""
    return {**{k: report.get(k) for k in ("dictionary", "kind", "num_latents", "k", "site", "step")},
            "controls": sorted(report.get("summary", {}))}


@locks_output(lambda report, path, **_: path)
def write_truth(report: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Write a report as JSON atomically (NaN becomes null), its store and dictionary relative to the file's folder
    (a run folder can move); returns the path. A report of another dictionary or other controls there is refused
    unless ``overwrite``."""
    path = Path(path)  # its folder exists: the output lock made it
    previous = previous_output(path, "ground-truth report", overwrite)
    same_settings(path, truth_settings(previous) if previous else None, truth_settings(_clean(report)),
                  what="a ground-truth report", overwrite=overwrite)
    links = {k: relative_link(report[k], path.parent) for k in ("store", "dictionary_path") if report.get(k)}
    atomic_write_json(path, _clean({**report, **links}), what="ground-truth report")
    return path


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
