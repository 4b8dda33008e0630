"""Ground truth for a dictionary's latents in the embedded shapes world: which concept does each latent detect?

Concepts and token labels come from `labels.py` (the oracle's reading of each generated image). For one dictionary
at its (site, step) of an activation store with a held-out split:

* Threshold rule (one rule for every dictionary and for the random floor): a latent *fires* on a token when its
  activation exceeds a threshold t; t is tried at ``THRESHOLD_LEVELS`` evenly spaced fractions j/L (j = 0..L-1)
  of the latent's max over the train tokens (j = 0: any positive activation), and for every (latent, concept)
  the one with the best token-level F1 on the **train** images is kept. The latent's concept is the one with the
  best train F1. Everything reported is then measured on the **held-out** images at those train choices:
  F1, precision, recall (token level), AUROC (token level, activations binned at the same L levels; ties count
  half), image AUROC (the latent's max over an image vs the concept's presence, exact over held-out images) and
  IoU (per held-out image, thresholded map vs concept mask; averaged over images where either is non-empty).
  Non-positive activations never fire (ITDA's negative coefficients included).
* Floor: `RandomDirections` — as many unit directions as the dictionary has latents, drawn at random in the
  dictionary's own input space (after its normaliser), the same k, codes = top-k of the projections of the
  normalised input minus its train mean (the mean that an SAE's pre-encoder bias removes), ReLU'd. Measured
  with exactly the same passes and rule.
* Ceiling: per concept a logistic-regression probe (L2 ``PROBE_L2``, inputs standardised on train) on the raw
  site activations of train tokens, its threshold chosen for the best train F1, F1 measured on held-out tokens.
* Sparse probing (as SAEBench): per concept, the top 1 / 4 / 16 features by standardised mean difference
  |mean on positives - mean on negatives| / std (one rule for all three feature sets: the dictionary's latents,
  the random directions and the raw dimensions of the site), then a logistic probe on those features alone.
* Per dictionary: ``explained_share`` = share of alive latents (fired on a train token) whose held-out F1 ≥ 0.5,
  beside ``explained_share_random``; ``coverage[c]`` = held-out F1 of the single latent best for c on train,
  ``coverage_ratio[c]`` = it over ``probe_ceiling[c]``.

Concepts are scored when they have at least ``MIN_SCORED_POSITIVES`` positive tokens in both splits.
Latent statistics stream over the store's rows (batch × latents at most is dense); probes use up to
``max_probe_tokens`` tokens per split (whole images, picked at random with `random_seed`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from difflens.atomic import atomic_write_json
from difflens.dictionaries.base import Dictionary, SparseCodes

from .labels import TokenLabels, token_labels

THRESHOLD_LEVELS = 64  # thresholds tried per latent: j / L of its train max, j = 0..L-1
EXPLAINED_F1 = 0.5  # a latent is "explained" when its best concept's held-out F1 reaches this
MIN_SCORED_POSITIVES = 8  # positive tokens a concept needs in each split to be scored
SPARSE_PROBE_SIZES = (1, 4, 16)
FAMILY_COVERAGE_BAR = 0.7  # a concept is covered when its best latent's held-out F1 is >= this x the probe's
PROBE_L2 = 1e-4  # L2 penalty on probe weights (per token-mean logistic loss, standardised inputs)
PROBE_ITERS = 200  # L-BFGS iterations per probe fit

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


def auroc_from_counts(pos_GL, neg_GL) -> np.ndarray:
    """(G,) AUROC from counts of positives and negatives per score bin, bins in ascending order (ties: half)."""
    pos = np.asarray(pos_GL, dtype=np.float64)
    neg = np.asarray(neg_GL, dtype=np.float64)
    below = np.cumsum(neg, axis=-1) - neg
    P, N = pos.sum(-1), neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(-1) / (P * N)
    return np.where((P > 0) & (N > 0), out, np.nan)


def f1_score(tp, fired, positives):
    """F1 = 2TP / (fired + positives) (= 2TP / (2TP + FP + FN)), 0 when both are empty; broadcasts."""
    tp, fired, positives = (np.asarray(a, dtype=np.float64) for a in (tp, fired, positives))
    denom = fired + positives
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)


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
    """Per concept, a logistic probe on all dimensions: held-out {"f1", "precision", "recall", "auroc"} (C,)."""
    Xt, Xh = _standardise(X_train.double(), X_held.double())
    W, b = fit_logistic(Xt, Y_train)
    thr, _ = best_f1_threshold(logistic_scores(Xt, W, b), Y_train)
    held = logistic_scores(Xh, W, b)
    return {**scores_at(held, Y_held, thr), "auroc": auroc(held.numpy(), Y_held.numpy())}


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
# streaming per-latent statistics

class LatentConceptStats:
    """Sufficient statistics of one dictionary's latents against C concepts, accumulated batch by batch.

    1. `observe_max` over train rows: each latent's max activation (sets its L threshold levels).
    2. `add` over train rows, then `choose`: per (latent, concept) the level with the best train F1.
    3. `start_heldout`, `add` (with per-image maps) over held-out rows, then `result`.
    Histograms are (F·L, C) counts of positive tokens per activation level plus (F·L,) fired counts.
    """

    def __init__(self, num_latents: int, num_concepts: int, levels: int = THRESHOLD_LEVELS, big: bool = False):
        self.F, self.C, self.L = num_latents, num_concepts, levels
        self.dtype = torch.float64 if big else torch.float32
        self.max_F = torch.zeros(num_latents)

    def observe_max(self, codes: SparseCodes) -> None:
        v = codes.values.reshape(-1).float().clamp_min(0)
        self.max_F.scatter_reduce_(0, codes.indices.reshape(-1).long(), v, "amax")

    def start(self) -> None:
        self.step_F = torch.where(self.max_F > 0, self.max_F / self.L, torch.full_like(self.max_F, math.inf))
        self.hist = torch.zeros(self.F * self.L, self.C, dtype=self.dtype)
        self.fired = torch.zeros(self.F * self.L, dtype=torch.float64)
        self.pos = torch.zeros(self.C, dtype=torch.float64)
        self.n = 0
        self.images = None

    def _entries(self, codes: SparseCodes):
        vals, idx = codes.values.float(), codes.indices.long()
        b, k = (vals > 0).nonzero(as_tuple=True)
        f, v = idx[b, k], vals[b, k]
        level = (torch.ceil(v / self.step_F[f]) - 1).clamp(0, self.L - 1).long()
        return b, f, v, level

    def add(self, codes: SparseCodes, labels_BC: Tensor, image_pos_B: Tensor | None = None) -> None:
        b, f, v, level = self._entries(codes)
        lab = labels_BC.to(self.dtype)
        key = f * self.L + level
        self.hist.index_add_(0, key, lab[b])
        self.fired += torch.bincount(key, minlength=self.F * self.L).double()
        self.pos += lab.sum(0).double()
        self.n += labels_BC.shape[0]
        if self.images is not None:
            img_max, img_fire, img_tp = self.images
            at = image_pos_B[b] * self.F + f
            img_max.view(-1).scatter_reduce_(0, at, v, "amax")
            fires = level >= self.level_F[f]
            img_fire.view(-1).index_add_(0, at[fires], torch.ones(int(fires.sum())))
            tp = fires & labels_BC[b, self.concept_F[f]].bool()
            img_tp.view(-1).index_add_(0, at[tp], torch.ones(int(tp.sum())))

    def _cumulative(self) -> tuple[Tensor, Tensor]:
        """TP (F, L, C) and fired (F, L) when firing means level ≥ j."""
        tp = self.hist.view(self.F, self.L, self.C).flip(1).cumsum(1).flip(1)
        fired = self.fired.view(self.F, self.L).flip(1).cumsum(1).flip(1)
        return tp, fired

    def choose(self) -> None:
        """From the train histograms: best level and train F1 per (latent, concept); each latent's concept."""
        tp, fired = self._cumulative()
        f1 = 2 * tp.double() / (fired[:, :, None] + self.pos[None, None, :]).clamp_min(1)
        self.train_f1_FC, self.level_FC = f1.max(1)
        self.alive_F = self.max_F > 0
        self.concept_F = self.train_f1_FC.argmax(1)
        self.level_F = self.level_FC.gather(1, self.concept_F[:, None])[:, 0]
        self.train_pos, self.train_n = self.pos.clone(), self.n
        del self.hist, self.fired, tp, fired, f1

    def start_heldout(self, num_images: int) -> None:
        step = self.step_F
        self.start()
        self.step_F = step  # held-out activations are binned at the train levels (above the train max: top level)
        self.images = (torch.zeros(num_images, self.F), torch.zeros(num_images, self.F), torch.zeros(num_images, self.F))

    def result(self, image_pos_IC: np.ndarray, image_presence_IC: np.ndarray) -> dict:
        """Held-out measures at the train choices: per latent (its concept) and per (latent, concept) F1."""
        tp, fired = self._cumulative()
        tp_FC = tp.gather(1, self.level_FC[:, None, :])[:, 0].double()
        fired_FC = fired.gather(1, self.level_FC)
        f1_FC = f1_score(tp_FC.numpy(), fired_FC.numpy(), self.pos[None].numpy())
        F = torch.arange(self.F)
        c = self.concept_F
        tp_F, fired_F, pos_F = tp_FC[F, c].numpy(), fired_FC[F, c].numpy(), self.pos[c].numpy()
        # token AUROC from the level histograms of each latent's concept, "inactive" (≤ 0) as the lowest bin
        pos_L = self.hist.view(self.F, self.L, self.C)[F, :, c].double().numpy()
        neg_L = self.fired.view(self.F, self.L).numpy() - pos_L
        pos_bins = np.concatenate([(pos_F - pos_L.sum(1))[:, None], pos_L], 1)
        neg_bins = np.concatenate([(self.n - pos_F - neg_L.sum(1))[:, None], neg_L], 1)
        img_max, img_fire, img_tp = (t.numpy().astype(np.float64) for t in self.images)
        present = image_presence_IC[:, c.numpy()]
        img_pos = image_pos_IC[:, c.numpy()].astype(np.float64)
        union = img_fire + img_pos - img_tp
        some = union > 0
        iou = np.where(some, img_tp / np.maximum(union, 1), 0.0)
        iou_F = np.where(some.any(0), iou.sum(0) / np.maximum(some.sum(0), 1), np.nan)
        return {
            "f1_FC": f1_FC,
            "f1": f1_FC[F.numpy(), c.numpy()],
            "precision": np.where(fired_F > 0, tp_F / np.maximum(fired_F, 1), 0.0),
            "recall": np.where(pos_F > 0, tp_F / np.maximum(pos_F, 1), 0.0),
            "auroc": auroc_from_counts(pos_bins, neg_bins),
            "image_auroc": auroc(img_max, present),
            "iou": iou_F,
            "firing_rate": fired.numpy()[:, 0] / max(self.n, 1),
        }


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


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _mean(values) -> float | None:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return float(a.mean()) if a.size else None


def _encode(dictionary: Dictionary, acts: Tensor, device) -> SparseCodes:
    codes = dictionary.encode(acts.to(device))
    return SparseCodes(codes.values.float().cpu(), codes.indices.cpu())


@torch.no_grad()
def truth_report(dictionary, store=None, *, site: str | None = None, step: int | None = None,
                 max_train_images: int | None = None, random_seed: int = 0, max_probe_tokens: int = 65_536,
                 batch_size: int = 2048, labels: TokenLabels | None = None, device: str | torch.device = "cpu",
                 sparse_sizes=SPARSE_PROBE_SIZES) -> dict:
    """Ground-truth report of `dictionary` (object or folder) on `store` (default: the store it was trained on).

    Thresholds and concept choices come from the train images (the first `max_train_images` of them if set);
    every measure is taken on the held-out images. See the module docstring for each measure.
    """
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.sources import open_store

    name = None
    if isinstance(dictionary, (str, Path)):
        name = Path(dictionary).name
        dictionary = load_dictionary(dictionary)
    name = name or (Path(dictionary.path).name if getattr(dictionary, "path", None) else dictionary.kind)
    if store is None:
        store = (dictionary.store or {}).get("path")
        if not store:
            raise ValueError("this dictionary does not record its store: pass store=")
    if isinstance(store, (str, Path)):
        store = open_store(store)
    sparse_sizes = tuple(dict.fromkeys(int(n) for n in sparse_sizes))
    if any(n < 1 for n in sparse_sizes):
        raise ValueError(f"sparse probe sizes must be positive feature counts, got {list(sparse_sizes)}")
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
    dictionary = dictionary.to(device).eval()
    T = train_r.grid[0] * train_r.grid[1]

    train_images = train_r.image_ids()
    if max_train_images is not None:
        train_images = train_images[: int(max_train_images)]
    held_images = held_r.image_ids()
    pos_train, pos_held = labels.counts(train_images), labels.counts(held_images)
    scored = (pos_train >= MIN_SCORED_POSITIVES) & (pos_held >= MIN_SCORED_POSITIVES)
    cols = np.flatnonzero(scored)
    if not len(cols):
        raise ValueError("no concept has enough positive tokens in both the train and the held-out images")
    concepts = [labels.concepts[i] for i in cols]
    C = len(cols)
    probe_train_imgs = _pick_images(train_images, T, max_probe_tokens, random_seed)
    probe_held_imgs = _pick_images(held_images, T, max_probe_tokens, random_seed + 1)

    # pass 0 (train): mean of the inputs (centres the random directions), the probe's train tokens
    sum_D, n_train = torch.zeros(train_r.dim, dtype=torch.float64), 0
    probe_X, probe_Y = [], []
    for acts, lab, img in _rows(train_r, labels, cols, train_images, batch_size):
        sum_D += acts.double().sum(0)
        n_train += acts.shape[0]
        keep = torch.from_numpy(np.isin(img, probe_train_imgs))
        probe_X.append(acts[keep])
        probe_Y.append(lab[keep])
    center = dictionary.normalizer.normalize((sum_D / max(n_train, 1)).float()[None].to(device))[0].cpu()
    random = RandomDirections.like(dictionary, seed=random_seed, center_D=center).to(device)
    encoders = {"dictionary": dictionary, "random": random}
    big = max(train_r.num_rows, held_r.num_rows) > 2**24
    stats = {k: LatentConceptStats(e.num_latents, C, big=big) for k, e in encoders.items()}

    # pass A (train): each latent's max; the probe tokens' codes
    probe_codes: dict[str, list] = {k: [] for k in encoders}
    for acts, lab, img in _rows(train_r, labels, cols, train_images, batch_size):
        keep = torch.from_numpy(np.isin(img, probe_train_imgs))
        for k, enc in encoders.items():
            codes = _encode(enc, acts, device)
            stats[k].observe_max(codes)
            probe_codes[k].append(SparseCodes(codes.values[keep], codes.indices[keep]))
    # pass B (train): level histograms -> per (latent, concept) threshold, per latent concept
    for s in stats.values():
        s.start()
    for acts, lab, img in _rows(train_r, labels, cols, train_images, batch_size):
        for k, enc in encoders.items():
            stats[k].add(_encode(enc, acts, device), lab)
    for s in stats.values():
        s.choose()

    # pass C (held-out): histograms at the train levels, per-image maps; the probe's held-out tokens
    for s in stats.values():
        s.start_heldout(len(held_images))
    held_X, held_Y = [], []
    held_codes: dict[str, list] = {k: [] for k in encoders}
    for acts, lab, img in _rows(held_r, labels, cols, held_images, batch_size):
        pos_B = torch.from_numpy(np.searchsorted(held_images, img))
        keep = torch.from_numpy(np.isin(img, probe_held_imgs))
        held_X.append(acts[keep])
        held_Y.append(lab[keep])
        for k, enc in encoders.items():
            codes = _encode(enc, acts, device)
            stats[k].add(codes, lab, pos_B)
            held_codes[k].append(SparseCodes(codes.values[keep], codes.indices[keep]))
    img_pos = np.concatenate([labels.dense(held_images[i: i + 256])[:, :, cols].sum(1)
                              for i in range(0, len(held_images), 256)])
    results = {k: s.result(img_pos, img_pos > 0) for k, s in stats.items()}

    # per concept: the best single latent (chosen on train), probes
    coverage, coverage_latent = {}, {}
    for k, s in stats.items():
        train_f1 = torch.where(s.alive_F[:, None], s.train_f1_FC, torch.full_like(s.train_f1_FC, -1.0))
        best_F = train_f1.argmax(0).numpy()
        coverage[k] = results[k]["f1_FC"][best_F, np.arange(C)]
        coverage_latent[k] = best_F
    Xt, Yt = torch.cat(probe_X), torch.cat(probe_Y)
    Xh, Yh = torch.cat(held_X), torch.cat(held_Y)
    # the ceiling and the raw-dimension sparse probes do not depend on the dictionary: computed once per
    # (store, site, step, probe images, concepts, sizes) in a process
    key = (str(Path(store.root).resolve()), site, int(step), probe_train_imgs.tobytes(), probe_held_imgs.tobytes(),
           tuple(concepts), tuple(sparse_sizes))
    if key not in _BASELINES:
        raw_t, raw_h = ProbeFeatures(dense_ND=Xt), ProbeFeatures(dense_ND=Xh)
        _BASELINES[key] = (probe_ceiling(Xt, Yt, Xh, Yh),
                           sparse_probes(raw_t, raw_h, Yt, Yh, sparse_sizes))
        while len(_BASELINES) > 4:
            _BASELINES.pop(next(iter(_BASELINES)))
    ceiling, raw_sparse = _BASELINES[key]
    sparse = {}
    for k, enc in encoders.items():
        cat = lambda parts: SparseCodes(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]))
        ft = ProbeFeatures(codes=cat(probe_codes[k]), num_features=enc.num_latents)
        fh = ProbeFeatures(codes=cat(held_codes[k]), num_features=enc.num_latents)
        sparse[k] = sparse_probes(ft, fh, Yt, Yh, sparse_sizes)
    sparse["raw"] = raw_sparse

    # assemble
    d, r = stats["dictionary"], stats["random"]
    res = results["dictionary"]
    alive = d.alive_F.numpy()
    explained = alive & (res["f1"] >= EXPLAINED_F1)
    alive_r = r.alive_F.numpy()
    explained_r = alive_r & (results["random"]["f1"] >= EXPLAINED_F1)
    latents = []
    for f in np.flatnonzero(alive):
        latents.append({
            "latent": int(f), "concept": concepts[int(d.concept_F[f])],
            **{m: _nan_to_none(round(float(res[m][f]), 4)) for m in
               ("f1", "precision", "recall", "auroc", "image_auroc", "iou", "firing_rate")},
            "train_f1": round(float(d.train_f1_FC[f, d.concept_F[f]]), 4),
            "threshold": round(float(d.level_F[f] * d.step_F[f]), 6),
        })
    ratio = {c: (float(coverage["dictionary"][i] / ceiling["f1"][i]) if ceiling["f1"][i] > 0 else None)
             for i, c in enumerate(concepts)}
    per_concept = lambda a: {c: round(float(a[i]), 4) for i, c in enumerate(concepts)}

    def summary(k):
        rr, al = results[k], stats[k].alive_F.numpy()
        return {m: _mean(rr[m][al]) for m in ("f1", "precision", "recall", "auroc", "image_auroc", "iou")}

    named = {}
    for f in np.flatnonzero(explained):
        c = concepts[int(d.concept_F[f])]
        named[c] = named.get(c, 0) + 1
    return {
        "dictionary": name, "kind": dictionary.kind, "dictionary_path": str(dictionary.path) if dictionary.path else None,
        "site": site, "step": int(step), "store": str(store.root),
        "num_latents": int(dictionary.num_latents), "k": sparsity_k(dictionary),
        "alive": int(alive.sum()), "alive_random": int(alive_r.sum()),
        "explained_share": float(explained.sum() / max(alive.sum(), 1)),
        "explained_share_random": float(explained_r.sum() / max(alive_r.sum(), 1)),
        "explained_f1": EXPLAINED_F1,
        "mean_coverage": _mean(coverage["dictionary"]), "mean_coverage_random": _mean(coverage["random"]),
        "mean_probe_ceiling": _mean(ceiling["f1"]), "mean_coverage_ratio": _mean(list(ratio.values())),
        "coverage": per_concept(coverage["dictionary"]),
        "coverage_latent": {c: int(coverage_latent["dictionary"][i]) for i, c in enumerate(concepts)},
        "coverage_random": per_concept(coverage["random"]),
        "probe_ceiling": per_concept(ceiling["f1"]),
        "probe_ceiling_auroc": per_concept(ceiling["auroc"]),
        "coverage_ratio": {c: (None if v is None else round(v, 4)) for c, v in ratio.items()},
        "family_coverage": family_coverage(ratio),
        "sparse_probing": {
            "sizes": list(sparse_sizes),
            **{src: {n: _mean(v) for n, v in by_n.items()} for src, by_n in sparse.items()},
            "per_concept": {src: {n: per_concept(v) for n, v in by_n.items()} for src, by_n in sparse.items()},
        },
        "latent_means": {"dictionary": summary("dictionary"), "random": summary("random")},
        "explained_by_concept": dict(sorted(named.items(), key=lambda kv: -kv[1])),
        "concepts": concepts,
        "concepts_unscored": [c for i, c in enumerate(labels.concepts) if not scored[i]],
        "tokens": {"train": int(d.train_n), "held_out": int(d.n)},
        "images": {"train": int(len(train_images)), "held_out": int(len(held_images))},
        "probe_tokens": {"train": int(Xt.shape[0]), "held_out": int(Xh.shape[0])},
        "rules": {
            "threshold": f"per (latent, concept): best train F1 over t = j/{THRESHOLD_LEVELS} of the latent's train max, "
                         f"j = 0..{THRESHOLD_LEVELS - 1}; fires when activation > t; concept = best train F1; "
                         "measured on held-out images",
            "random_floor": "same count and k; unit directions in the dictionary's normalised input space; "
                            "ReLU(top-k of projections of the input minus its train mean)",
            "probe_ceiling": f"logistic regression (L2 {PROBE_L2}) on standardised raw site activations, "
                             "threshold = best train F1",
            "sparse_probing": "top-n features by |mean(pos) - mean(neg)| / std on train tokens, then a logistic probe",
            "iou": "mean over held-out images where the thresholded map or the concept mask is non-empty",
            "auroc": f"token level, from {THRESHOLD_LEVELS} activation levels plus 'inactive' (ties count half)",
            "scored_concepts": f">= {MIN_SCORED_POSITIVES} positive tokens in each split",
        },
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


def write_truth(report: dict, path: str | Path) -> Path:
    """Write a report as JSON atomically (NaN becomes null); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _clean(report))
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
