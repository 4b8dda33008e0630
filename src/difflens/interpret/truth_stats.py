"""Streaming statistics of a dictionary's latents against the world's concepts, at activation levels.

A latent's activations are binned at ``LEVELS`` evenly spaced levels of its **train** max: level j holds the
activations a with j/L < a/max ≤ (j+1)/L (above the train max: the top level); "fires at level ≥ j" is the
threshold a > j/L · max, so level 0 is "any positive activation". Every measure below comes from two kinds of
counts, gathered batch by batch:

* hist (F, L, C): tokens of concept c at level j of latent f; fired (F, L): tokens at level j; pos (C,), n.
* per held-out image (I, F): firings of each latent above its F1 threshold and in its upper range, and how many
  of those carry its matched concept (for IoU and for bootstrap intervals over images).

Concept choices are made on the train counts and measured on the held-out ones (`LatentConceptStats`):

* **F1 match** (recall-sensitive): per (latent, concept) the level with the best train F1; the latent's concept
  is the one with the best train F1.
* **Precise match** (the headline): at the upper range (a ≥ ½ of the train max, level ``UPPER_LEVEL``), a latent is
  *precise for* concept c on train when precision ≥ ``PRECISE_PRECISION``, lift (precision / c's base rate) ≥
  ``PRECISE_LIFT`` and it fires there on ≥ ``MIN_TRAIN_FIRES`` tokens. Its precise concept is the narrowest
  (lowest base rate) specific concept it is precise for (none: the specific concept of best train precision).
  A specific concept is allowed only when it is narrower than every coarse one the latent is precise for
  (``NARROWER``). It *counts* when, on held-out images, the same holds for that concept with ≥ ``MIN_HELDOUT_FIRES`` firings.
* **Specificity by level**: precision, lift and firings of the precise concept in each of ``BANDS`` bands of the
  max (deciles: j/10 < a/max ≤ (j+1)/10), plus at "any activation".
* **Average precision** (threshold-free): tokens ranked by activation (ties within a level together, inactive
  tokens never retrieved); the latent's AP concept is the specific concept of best train AP.

Memory: the histograms are F·L·C counts; callers split large dictionaries into latent ranges (`latent_ranges`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from difflens.dictionaries.base import SparseCodes

LEVELS = 40  # activation levels per latent: j / L of its train max
BANDS = 10  # reported bands of the max (deciles); LEVELS is a multiple of it
UPPER_LEVEL = LEVELS // 2  # the upper range: activation > ½ of the train max
PRECISE_PRECISION = 0.9
PRECISE_LIFT = 2.0
MIN_TRAIN_FIRES = 5
MIN_HELDOUT_FIRES = 3
NARROWER = 0.9  # a specific concept must cover at most this share of a coarse one's base rate to say more
HIST_BUDGET_BYTES = 1 << 30  # per dictionary and pass: larger dictionaries are processed in latent ranges


def latent_ranges(num_latents: int, num_concepts: int, budget: int | None = None,
                  big: bool = False) -> list[tuple[int, int]]:
    """Latent ranges whose (F, L, C) histogram and the temporaries of `LatentConceptStats.choose` (measured: about
    12 copies at float32's size) fit ``budget`` bytes (default ``HIST_BUDGET_BYTES``)."""
    budget = HIST_BUDGET_BYTES if budget is None else int(budget)
    per_latent = LEVELS * max(num_concepts, 1) * 4 * (14 if big else 13)
    size = max(1, min(num_latents, budget // per_latent))
    return [(lo, min(lo + size, num_latents)) for lo in range(0, num_latents, size)]


def level_of(values: Tensor, step: Tensor) -> Tensor:
    """The level of positive activations, j with j·step < a ≤ (j+1)·step (step = train max / L); above the train
    max: the top level. One rule for every pass."""
    return (torch.ceil(values / step) - 1).clamp(0, LEVELS - 1).long()


def cumulative(hist_FLC: Tensor, fired_FL: Tensor) -> tuple[Tensor, Tensor]:
    """(TP (F, L, C), fired (F, L)) when firing means level ≥ j."""
    return hist_FLC.flip(1).cumsum(1).flip(1), fired_FL.flip(1).cumsum(1).flip(1)


def average_precision(tp_FLC: Tensor, fired_FL: Tensor, pos_C: Tensor) -> Tensor:
    """(F, C) AP of each latent's activation ranking for each concept, from cumulative counts (level ≥ j);
    positives per concept (C,), or per latent and concept (F, C)."""
    tp = tp_FLC.double()
    pos = pos_C.double().clamp_min(1)
    recall = tp / (pos[None, None, :] if pos.ndim == 1 else pos[:, None, :])
    precision = tp / fired_FL.double().clamp_min(1)[:, :, None]
    gain = recall - torch.cat([recall[:, 1:], torch.zeros_like(recall[:, :1])], 1)  # recall added at level j
    return (gain * precision).sum(1)


def precise_choice(tp_FC: Tensor, fired_F: Tensor, pos_C: Tensor, n: int, specific_C: Tensor,
                   allow_coarse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(concept (F,), precise (F, C) bool, found (F,) bool) at one level: the narrowest allowed concept each latent
    is precise for (found), or the allowed concept of best precision when it is precise for none (not found: such
    a latent never counts). A specific concept is allowed only
    when it is narrower (base rate ≤ ``NARROWER`` ×) than every coarse concept the latent is precise for: in a
    store where every object is large, size:large says no more than part:object."""
    base = pos_C.double() / max(n, 1)
    precision = tp_FC.double() / fired_F.double().clamp_min(1)[:, None]
    precise = precise_for(precision, fired_F[:, None], base)
    coarse_base_F = torch.where(precise & ~specific_C, base, torch.full_like(precision, math.inf)).amin(1)
    allowed_C = (specific_C & (base <= NARROWER * coarse_base_F[:, None])) | (allow_coarse & ~specific_C)
    narrow = torch.where(precise & allowed_C, -base, torch.full_like(precision, -math.inf))
    fallback = torch.where(allowed_C, precision - 1e-9 * base, torch.full_like(precision, -math.inf))
    has = narrow.amax(1) > -math.inf
    return torch.where(has, narrow.argmax(1), fallback.argmax(1)), precise, has


def precise_for(precision, fires, base, min_fires: int = MIN_TRAIN_FIRES):
    """The precise rule, elementwise on broadcasting arrays or tensors (NaN precision: never precise)."""
    return (precision >= PRECISE_PRECISION) & (precision >= PRECISE_LIFT * base) & (fires >= min_fires) & (base > 0)


def f1_score(tp, fired, positives):
    """F1 = 2TP / (fired + positives) (= 2TP / (2TP + FP + FN)), 0 when both are empty; broadcasts."""
    tp, fired, positives = (np.asarray(a, dtype=np.float64) for a in (tp, fired, positives))
    denom = fired + positives
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)


def auroc_from_counts(pos_GL, neg_GL) -> np.ndarray:
    """(G,) AUROC from counts of positives and negatives per score bin, bins in ascending order (ties: half)."""
    pos = np.asarray(pos_GL, dtype=np.float64)
    neg = np.asarray(neg_GL, dtype=np.float64)
    below = np.cumsum(neg, axis=-1) - neg
    P, N = pos.sum(-1), neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(-1) / (P * N)
    return np.where((P > 0) & (N > 0), out, np.nan)


class LatentConceptStats:
    """Sufficient statistics of latents [lo, lo + F) of one dictionary against C concepts (see the module docstring).

    1. `add` over train rows, then `choose`: F1 levels, precise and AP concepts, precise-for sets.
    2. `start_heldout`, `add` (with each row's held-out image position) over held-out rows, then `result`.
    ``max_F`` is each latent's train max (F,); ``specific_C`` marks the concepts a headline may name.
    """

    def __init__(self, max_F: Tensor, num_concepts: int, specific_C: Tensor, lo: int = 0, big: bool = False):
        self.F, self.C, self.L, self.lo = len(max_F), num_concepts, LEVELS, lo
        self.dtype = torch.float64 if big else torch.float32
        self.max_F = max_F.float()
        self.specific_C = specific_C.bool()
        self.step_F = torch.where(self.max_F > 0, self.max_F / self.L, torch.full_like(self.max_F, math.inf))
        self.images = None
        self._reset()

    def _reset(self) -> None:
        self.hist = torch.zeros(self.F * self.L, self.C, dtype=self.dtype)
        self.fired = torch.zeros(self.F * self.L, dtype=torch.float64)
        self.pos = torch.zeros(self.C, dtype=torch.float64)
        self.n = 0

    def entries(self, codes: SparseCodes):
        """(row, latent within the range, value, level) of the codes' positive activations in this range."""
        vals, idx = codes.values.float(), codes.indices.long() - self.lo
        b, k = ((vals > 0) & (idx >= 0) & (idx < self.F)).nonzero(as_tuple=True)
        f, v = idx[b, k], vals[b, k]
        return b, f, v, level_of(v, self.step_F[f])

    def add(self, codes: SparseCodes, labels_BC: Tensor, image_pos_B: Tensor | None = None) -> None:
        b, f, v, level = self.entries(codes)
        lab = labels_BC.to(self.dtype)
        key = f * self.L + level
        self.hist.index_add_(0, key, lab[b])
        self.fired += torch.bincount(key, minlength=self.F * self.L).double()
        self.pos += lab.sum(0).double()
        self.n += labels_BC.shape[0]
        if self.images is not None:
            at = image_pos_B[b] * self.F + f
            self.images["max"].view(-1).scatter_reduce_(0, at, v, "amax")
            lab_b = labels_BC[b].bool()
            for fires, concept, (fire_IF, tp_IF) in ((level >= self.level_F[f], self.concept_F, self.images["f1"]),
                                                     (level >= UPPER_LEVEL, self.precise_concept_F, self.images["upper"])):
                fire_IF.view(-1).index_add_(0, at[fires], torch.ones(int(fires.sum())))
                tp = fires & lab_b.gather(1, concept[f][:, None])[:, 0]
                tp_IF.view(-1).index_add_(0, at[tp], torch.ones(int(tp.sum())))

    def _counts(self) -> tuple[Tensor, Tensor, Tensor]:
        hist = self.hist.view(self.F, self.L, self.C)
        tp, fired = cumulative(hist, self.fired.view(self.F, self.L))
        return hist, tp, fired

    def choose(self) -> None:
        """From the train counts: F1 levels and concepts, precise concepts and sets, AP concepts."""
        _, tp, fired = self._counts()
        f1 = 2 * tp.double() / (fired[:, :, None] + self.pos[None, None, :]).clamp_min(1)
        self.train_f1_FC, self.level_FC = f1.max(1)
        del f1
        self.alive_F = self.max_F > 0
        self.concept_F = self.train_f1_FC.argmax(1)
        self.level_F = self.level_FC.gather(1, self.concept_F[:, None])[:, 0]
        tp_up, fired_up = tp[:, UPPER_LEVEL], fired[:, UPPER_LEVEL]
        self.precise_concept_F, self.precise_FC, self.found_F = precise_choice(tp_up, fired_up, self.pos, self.n,
                                                                               self.specific_C)
        self.precise_any_concept_F, _, self.found_any_F = precise_choice(tp_up, fired_up, self.pos, self.n,
                                                                         self.specific_C, allow_coarse=True)
        ap = average_precision(tp, fired, self.pos)
        self.ap_concept_F = torch.where(self.specific_C, ap, torch.full_like(ap, -1.0)).argmax(1)
        del self.hist, self.fired, tp, fired, ap

    def start_heldout(self, num_images: int) -> None:
        """Held-out activations are binned at the train levels (above the train max: the top level)."""
        self._reset()
        zeros = lambda: torch.zeros(num_images, self.F)  # noqa: E731
        self.images = {"f1": (zeros(), zeros()), "upper": (zeros(), zeros()), "max": zeros()}

    def _at(self, tp: Tensor, fired: Tensor, concept_F: Tensor, level_F: Tensor | int) -> tuple[np.ndarray, ...]:
        """(TP, fired, positives) (F,) of each latent for its concept when firing at level ≥ its level."""
        F = torch.arange(self.F)
        level = level_F if isinstance(level_F, Tensor) else torch.full((self.F,), int(level_F))
        return (tp[F, level, concept_F].double().numpy(), fired[F, level].numpy(), self.pos[concept_F].numpy())

    def result(self, image_pos_IC: np.ndarray) -> dict:
        """Held-out measures at the train choices (see the module docstring); arrays over the F latents."""
        hist, tp, fired = self._counts()
        F = torch.arange(self.F)
        c = self.concept_F
        tp_FC = tp.gather(1, self.level_FC[:, None, :])[:, 0].double()
        fired_FC = fired.gather(1, self.level_FC)
        f1_FC = f1_score(tp_FC.numpy(), fired_FC.numpy(), self.pos[None].numpy())
        tp_F, fired_F, pos_F = self._at(tp, fired, c, self.level_F)
        # token AUROC of the F1 concept from the level histograms, "inactive" (≤ 0) as the lowest bin
        pos_L = hist[F, :, c].double().numpy()
        neg_L = self.fired.view(self.F, self.L).numpy() - pos_L
        pos_bins = np.concatenate([(pos_F - pos_L.sum(1))[:, None], pos_L], 1)
        neg_bins = np.concatenate([(self.n - pos_F - neg_L.sum(1))[:, None], neg_L], 1)

        fire_IF, tp_IF = (t.numpy().astype(np.float64) for t in self.images["f1"])
        img_pos = image_pos_IC[:, c.numpy()].astype(np.float64)
        union = fire_IF + img_pos - tp_IF
        some = union > 0
        iou = np.where(some, tp_IF / np.maximum(union, 1), 0.0)
        out = {
            "f1_FC": f1_FC,
            "f1": f1_FC[F.numpy(), c.numpy()],
            "precision": np.where(fired_F > 0, tp_F / np.maximum(fired_F, 1), 0.0),
            "recall": np.where(pos_F > 0, tp_F / np.maximum(pos_F, 1), 0.0),
            "auroc": auroc_from_counts(pos_bins, neg_bins),
            "iou": np.where(some.any(0), iou.sum(0) / np.maximum(some.sum(0), 1), np.nan),
            "firing_rate": fired.numpy()[:, 0] / max(self.n, 1),
            "found": self.found_F.numpy(),
            "images": {"f1": (fire_IF, tp_IF),
                       "upper": tuple(t.numpy().astype(np.float64) for t in self.images["upper"]),
                       "max": (self.images["max"].numpy(),)},
        }
        out.update(self._precise_result(hist, tp, fired))
        return out

    def _precise_result(self, hist: Tensor, tp: Tensor, fired: Tensor) -> dict:
        """The precise match, specificity by band and AP on held-out counts."""
        base_C = self.pos.numpy() / max(self.n, 1)
        out = {}
        for name, concept, found in (("precise", self.precise_concept_F, self.found_F),
                                     ("precise_any", self.precise_any_concept_F, self.found_any_F)):
            tp_up, fires_up, pos = self._at(tp, fired, concept, UPPER_LEVEL)
            precision = np.where(fires_up > 0, tp_up / np.maximum(fires_up, 1), np.nan)
            base = base_C[concept.numpy()]
            # counts when precise for its concept on train (found) and again on held-out images
            out[name] = (self.alive_F.numpy() & found.numpy()
                         & precise_for(precision, fires_up, base, MIN_HELDOUT_FIRES))
            if name == "precise":
                out.update({"upper_precision": precision, "upper_fires": fires_up, "upper_base": base,
                            "upper_recall": np.where(pos > 0, tp_up / np.maximum(pos, 1), 0.0)})
        F = torch.arange(self.F)
        c = self.precise_concept_F
        per = self.L // BANDS
        band_tp = hist[F, :, c].double().view(self.F, BANDS, per).sum(2).numpy()
        band_fires = self.fired.view(self.F, BANDS, per).sum(2).numpy()
        tp_any, fires_any, _ = self._at(tp, fired, c, 0)
        a = self.ap_concept_F
        ap = average_precision(tp[F, :, a][:, :, None], fired, self.pos[a][:, None])[:, 0]
        out.update({
            "band_precision": np.where(band_fires > 0, band_tp / np.maximum(band_fires, 1), np.nan),
            "band_fires": band_fires,
            "any_precision": np.where(fires_any > 0, tp_any / np.maximum(fires_any, 1), np.nan),
            "ap": ap.numpy(),
        })
        return out
