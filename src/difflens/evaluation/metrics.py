"""Reconstruction metrics — the single definition difflens uses.

    FVU = Σ_tokens ‖x − x̂‖² / Σ_tokens ‖x − mean(x)‖²

where mean(x) is the per-dimension mean over the same set of tokens (a training batch, or the
whole evaluation window), i.e. FVU = 1 − R². Variance explained = 1 − FVU. Evaluation reports
it in residual space (what users see) and in the dictionary's normalised space (what the
training loss optimises; the two differ under whitening, which re-weights directions).

Every result names both: ``fvu_residual`` and ``fvu_input_space`` (with ``input_space`` = residual,
standardised or pca-whitened, and ``loss_space``, where training measured its loss).

L0 = mean number of non-zero codes per token. Dead fraction = share of latents that never
fired over the evaluated token window (state the window when reporting it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from difflens.dictionaries.base import Dictionary, check_activations

TABLE = ["site", "step", "split", "kind", "num_latents", "input_space", "loss_space", "fvu_residual",
         "fvu_input_space", "l0", "dead_fraction", "tokens"]  # the columns `eval` and the demo print (`format_table`)


def fvu(x_BD: Tensor, recon_BD: Tensor) -> float:
    """FVU of one batch (see module docstring)."""
    x, r = x_BD.double(), recon_BD.double()
    return float((x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-300))


class MetricAccumulator:
    """Streams batches in float64 so FVU over a large window equals the one-shot value."""

    def __init__(self, dim: int, num_latents: int):
        self.n = 0
        self.sum_x = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq = 0.0
        self.sse = 0.0
        self.l0_sum = 0.0
        self.fired = torch.zeros(max(num_latents, 0), dtype=torch.long)

    def update(self, x_BD: Tensor, recon_BD: Tensor, indices_BK: Tensor | None = None, values_BK: Tensor | None = None):
        x, r = x_BD.detach().double().cpu(), recon_BD.detach().double().cpu()
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_sq += float(x.pow(2).sum())
        self.sse += float((x - r).pow(2).sum())
        if values_BK is not None:
            active = values_BK.detach().cpu() != 0
            self.l0_sum += float(active.sum())
            if self.fired.numel():
                self.fired += torch.bincount(indices_BK.detach().cpu()[active], minlength=self.fired.numel())

    def total_variance(self) -> float:
        return self.sum_sq - float(self.sum_x.pow(2).sum()) / max(self.n, 1)

    def result(self) -> dict:
        value = self.sse / max(self.total_variance(), 1e-300)
        return {
            "fvu": value,
            "variance_explained": 1.0 - value,
            "l0": self.l0_sum / max(self.n, 1),
            "dead_fraction": float((self.fired == 0).float().mean()) if self.fired.numel() else 0.0,
            "tokens": self.n,
        }


INPUT_SPACE = {"none": "residual", "standardise": "standardised", "pca": "pca-whitened"}


def eval_split(dictionary: Dictionary, data_store, wanted: str) -> str:
    """'auto': the held-out split of the store the dictionary was trained on, every row of any other store."""
    if wanted != "auto":
        return wanted
    trained_on = dictionary.store or {}
    identity = data_store.identity() if hasattr(data_store, "identity") else {}
    # a random-init control store has the same prompts and weights: its identity (and so a dictionary trained on
    # it) carries "control", which normal stores omit
    same = bool(trained_on.get("prompts_hash")) and all(trained_on.get(k) == identity.get(k)
                                                          for k in ("prompts_hash", "weights", "model", "control"))
    if same and getattr(data_store, "holdout", None):
        return "held-out"
    return "all"


@torch.no_grad()
def evaluate(dictionary: Dictionary, source=None, *, site: str | None = None, step: int | None = None,
             split: str = "auto", max_tokens: int = 100_000, batch_size: int = 4096, seed: int = 0,
             device: str | torch.device = "cpu") -> dict:
    """Metrics of ``dictionary`` on up to ``max_tokens`` shuffled rows of ``source``.

    source: a store folder, store, capture, reader or tensor; None: the store it was trained on. site/step
    default to the dictionary's own (a dictionary across steps: all its steps pooled, in batches balanced per
    step, each row normalised by its step where it has one normaliser per step; ``step`` may also be a list).
    split 'auto': the held-out images of its training store (rows it never saw), or all rows of another store;
    the result says which (``split``, ``in_sample``).
    """
    from difflens.dictionaries.normalization import denormalize_rows, normalize_rows
    from difflens.dictionaries.train.data import resolve_data, row_steps
    from difflens.store.sources import open_store

    if source is None:
        source = dictionary.locate_store()
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        source = open_store(source)
    store = source if hasattr(source, "entries") else getattr(source, "store", None)
    chosen = eval_split(dictionary, store, split) if store is not None else ("all" if split == "auto" else split)
    data = resolve_data(source, site if site is not None else dictionary.site,
                        step if step is not None else dictionary.steps, chosen)
    reader = data.reader
    if reader.dim != dictionary.d_in:
        raise ValueError(f"the activations have width {reader.dim} but the dictionary expects width {dictionary.d_in}")
    dictionary = dictionary.to(device).eval()
    normalizer = dictionary.normalizer if data.steps else dictionary.normalizer_for(data.step)
    resid = MetricAccumulator(dictionary.d_in, dictionary.num_latents)
    normed = MetricAccumulator(dictionary.d_in, 0)
    for acts, rows in reader.iter_batches(batch_size, shuffle=True, seed=seed, epoch=10_000):
        acts = acts[: max_tokens - resid.n].float().to(device)
        steps_B = row_steps(reader, rows[: acts.shape[0]])
        check_activations(acts, dictionary.d_in)
        z = normalize_rows(normalizer, acts, steps_B)
        codes = dictionary.encode_normalized(z)
        z_hat = dictionary.decode_normalized(codes)
        resid.update(acts, denormalize_rows(normalizer, z_hat, steps_B), codes.indices, codes.values)
        normed.update(z, z_hat)
        if resid.n >= max_tokens:
            break
    if resid.n == 0:
        raise ValueError(f"no rows to evaluate on (split {data.split!r} of {data.site} step {data.step} is empty)")
    metrics = resid.result()
    in_sample = _overlaps_training(dictionary, data)
    return {
        "site": data.site, "step": data.step, **({"steps": data.steps} if data.steps else {}),
        "split": data.split, "in_sample": in_sample,
        "fvu_residual": metrics["fvu"],
        "fvu_input_space": normed.result()["fvu"],
        "variance_explained": metrics["variance_explained"],
        "l0": metrics["l0"], "dead_fraction": metrics["dead_fraction"], "tokens": metrics["tokens"],
        "kind": dictionary.kind, "num_latents": dictionary.num_latents,
        "normalization": dictionary.normalizer.kind,
        "input_space": INPUT_SPACE[dictionary.normalizer.kind],
        "loss_space": loss_space(dictionary),
    }


def _overlaps_training(dictionary: Dictionary, data) -> bool | None:
    """True when the evaluated rows may include rows the dictionary was trained on (None: cannot tell)."""
    trained = dictionary.store or {}
    if not trained.get("prompts_hash") or not (data.store or {}).get("prompts_hash"):
        return None
    if trained.get("prompts_hash") != data.store.get("prompts_hash"):
        return False
    split_apart = (data.split == "held-out" and dictionary.meta.get("split") == "train"
                   and dictionary.meta.get("holdout") == data.holdout)
    return not split_apart


def loss_space(dictionary: Dictionary) -> str:
    """The space the dictionary's training loss was measured in: its input space unless trained otherwise."""
    if dictionary.meta.get("train", {}).get("loss_space") == "residual":
        return "residual"
    return INPUT_SPACE[dictionary.normalizer.kind]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain fixed-width table of ``rows`` (floats with 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
