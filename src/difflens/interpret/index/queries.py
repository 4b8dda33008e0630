"""`FeatureIndex`: a loaded or built index and what it answers about each latent (frequencies, activation
statistics, histograms, top images, activation-quantile samples, activation maps recomputed from the store).

Tensors (S steps, F latents, N top_n, R samples, H histogram bins, I images of the store):
    steps (S,), tokens (S,), count (S, F) firing tokens, images (S, F) firing images, sum (S, F) float64,
    max (S, F), hist (F, H + 2) [underflow, H bins, overflow], hist_edges (H + 1,),
    top_score/top_example (F, N) best first, sample_key/sample_score/sample_example (F, R), where an example
    (image, step) is one int64: image_id × S + the step's position in ``steps`` (-1: an empty slot),
    image_start/image_rows (S, I): the first store row and the number of rows of each image (-1 / 0: absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from difflens.configs import differences
from difflens.store import run_layout

from .accumulate import encode_rows
from .config import IndexConfig
from .files import TENSORS_FILE, read_header, read_tensors, write_index
from .identity import dictionary_identity


class FeatureIndex:
    """What every latent of a dictionary does on one site's rows, at one or several steps (see module docstring).

    Loaded or built; tensors live on the CPU. ``store`` and ``dictionary`` are opened lazily from the recorded
    paths when an activation map needs them (pass them to :meth:`load` when the files moved).
    """

    def __init__(self, header: dict, tensors: dict[str, Tensor], store=None, dictionary=None):
        self.header = header
        self.tensors = tensors
        self.config = IndexConfig(**header["config"])
        self.site: str = header["site"]
        self.steps: list[int] = [int(s) for s in header["steps"]]
        self.split: str = header["split"]
        self.num_latents: int = int(header["dictionary"]["num_latents"])
        self.dictionary_kind: str = header["dictionary"]["kind"]
        self.dictionary_path: str | None = header.get("dictionary_path")
        self.store_path: str | None = header.get("store_path")
        self.stream: str = header.get("stream", "image")
        self.grid: tuple[int, int] | None = tuple(header["grid"]) if header.get("grid") else None
        self.complete: bool = bool(header.get("complete"))
        self.prefix_sizes: list[int] | None = header.get("prefix_sizes")
        """Matryoshka dictionaries: the nested prefix sizes (None: another kind, or an index built before they were
        recorded)"""
        self.path: Path | None = None  # the folder it was loaded from or written to (None: in memory)
        self._store = store
        self._dictionary = dictionary
        self._readers: dict[int, object] = {}

    # ---- files ----------------------------------------------------------------------------------------------
    @staticmethod
    def read_header(folder: str | Path) -> dict | None:
        """The JSON header of an index folder (None if it holds no index); ValueError names a corrupt file."""
        return read_header(folder)

    @classmethod
    def load(cls, folder: str | Path, dictionary=None, store=None) -> "FeatureIndex":
        """Open an index folder; ``dictionary`` / ``store`` (checked against the index) replace the recorded paths."""
        folder = Path(folder)
        header = cls.read_header(folder)
        if header is None:
            raise FileNotFoundError(f"no feature index in {folder}: {folder / TENSORS_FILE} is missing")
        tensors = read_tensors(folder)
        index = cls(header, tensors)
        index.path = folder.resolve()
        if dictionary is not None:
            index.dictionary = dictionary
        if store is not None:
            index.store = store
        return index

    def save(self, folder: str | Path) -> Path:
        """Write index.safetensors (the tensors, the header in its metadata) then index.json, each atomically."""
        folder = Path(folder)
        self.header = {**self.header, **run_layout.relative_links(folder, store=self.store_path,
                                                                   dictionary=self.dictionary_path)}
        write_index(folder, self.header, self.tensors, self.summary())
        self.path = folder.resolve()
        return folder

    # ---- provenance -----------------------------------------------------------------------------------------
    @property
    def store(self):
        """The activation store the index was built on (opened on first use from its path recorded relative to
        the index, else from the absolute one; checked)."""
        if self._store is None:
            from difflens.store import ActivationStore

            if not self.store_path:
                raise ValueError("this feature index records no store path; pass store= to FeatureIndex.load")
            self._store = run_layout.open_link(self.path, self.header.get("store_relative"), self.store_path,
                                               lambda p: self._check_store(ActivationStore.open(p)),
                                               "the feature index's store")
        return self._store

    @store.setter
    def store(self, store) -> None:
        self._check_store(store)
        self._store, self._readers = store, {}

    def _check_store(self, store):
        ident = {k: v for k, v in store.identity().items() if k not in ("path", "control")}
        saved = {k: v for k, v in self.header["store"].items() if k in ident}
        diff = differences(saved, ident, "index")
        # a random-model control store draws the same images from the same prompts: only "control" tells them apart
        # (absent in stores without a control, so absent means "none" on either side)
        control, built = store.identity().get("control", "none"), self.header["store"].get("control", "none")
        if control != built:
            diff.append(f"control: index {built!r}, store {control!r}")
        if diff:
            raise ValueError(f"store {store.root} is not the one this feature index was built on ({'; '.join(diff)})")
        return store

    @property
    def dictionary(self):
        """The indexed dictionary (loaded on first use from its path recorded relative to the index, else from the
        absolute one; checked by fingerprint)."""
        if self._dictionary is None:
            if not self.dictionary_path:
                raise ValueError("this feature index records no dictionary path (it was built from an in-memory "
                                 "dictionary); pass dictionary= to FeatureIndex.load")
            from difflens.dictionaries.io import load_dictionary

            def checked(path: Path):
                self.dictionary = load_dictionary(path)  # the setter refuses another dictionary (ValueError)
                return self._dictionary

            run_layout.open_link(self.path, self.header.get("dictionary_relative"), self.dictionary_path, checked,
                                 "the feature index's dictionary")
        return self._dictionary

    @dictionary.setter
    def dictionary(self, dictionary) -> None:
        diff = differences(self.header["dictionary"], dictionary_identity(dictionary), "index")
        if diff:
            raise ValueError(f"dictionary {getattr(dictionary, 'path', None) or '(in memory)'} is not the one this "
                             f"feature index was built with ({'; '.join(diff)})")
        self._dictionary = dictionary

    # ---- look-ups -------------------------------------------------------------------------------------------
    def _latent(self, latent) -> int:
        if isinstance(latent, bool) or not isinstance(latent, (int, np.integer, Tensor)) or (
                isinstance(latent, Tensor) and latent.numel() != 1):
            raise ValueError(f"latent must be an integer id, got {latent!r}")
        i = int(latent)
        if not 0 <= i < self.num_latents:
            raise ValueError(f"latent {i} does not exist: this {self.dictionary_kind} dictionary has latents "
                             f"0..{self.num_latents - 1}")
        return i

    def _step(self, step) -> int:
        s = int(step)
        if s not in self.steps:
            raise ValueError(f"step {s} is not in this feature index (steps {self.steps})")
        return self.steps.index(s)

    @property
    def tokens(self) -> dict[int, int]:
        """Tokens indexed per step."""
        return {s: int(n) for s, n in zip(self.steps, self.tensors["tokens"].tolist())}

    @property
    def top_n(self) -> int:
        return int(self.tensors["top_score"].shape[1])

    def prefix_levels(self) -> Tensor | None:
        """(F,) each latent's Matryoshka prefix level (0: in the smallest prefix); None when not Matryoshka."""
        from difflens.dictionaries.sae_families import prefix_levels

        return prefix_levels(self.prefix_sizes) if self.prefix_sizes else None

    def prefix_level(self, latent) -> int | None:
        """The smallest Matryoshka prefix holding ``latent`` (0: the most general latents); None when not Matryoshka."""
        i = self._latent(latent)
        levels = self.prefix_levels()
        return None if levels is None else int(levels[i])

    def frequencies(self) -> Tensor:
        """(S, F) share of each step's tokens on which each latent is active (value > 0)."""
        tokens = self.tensors["tokens"].clamp_min(1).double()[:, None]
        return self.tensors["count"].double() / tokens

    def frequency(self, latent) -> dict[int, float]:
        """Per step: the share of tokens with activation > 0."""
        i = self._latent(latent)
        return {s: float(f) for s, f in zip(self.steps, self.frequencies()[:, i].tolist())}

    def image_frequency(self, latent) -> dict[int, float]:
        """Per step: the share of indexed images on which the latent fires on at least one token."""
        i = self._latent(latent)
        indexed = self.header["images_indexed"]
        return {s: int(self.tensors["images"][j, i]) / max(int(indexed[str(s)]), 1) for j, s in enumerate(self.steps)}

    @property
    def max_activation(self) -> Tensor:
        """(F,) largest activation over every indexed token and step (0: never active)."""
        return self.tensors["max"].max(0).values

    @property
    def mean_activation(self) -> Tensor:
        """(F,) mean activation over the tokens where the latent is active (0: never active)."""
        count = self.tensors["count"].sum(0)
        return (self.tensors["sum"].sum(0) / count.clamp_min(1)).float()

    def step_stats(self, latent) -> dict[int, dict]:
        """Per step: {"frequency", "tokens", "images", "max", "mean"} of one latent."""
        i = self._latent(latent)
        t = self.tensors
        out = {}
        for j, s in enumerate(self.steps):
            n = int(t["count"][j, i])
            out[s] = {"frequency": n / max(int(t["tokens"][j]), 1), "tokens": n, "images": int(t["images"][j, i]),
                      "max": float(t["max"][j, i]), "mean": float(t["sum"][j, i]) / max(n, 1)}
        return out

    def alive(self) -> Tensor:
        """(F,) bool: active at least once."""
        return self.tensors["count"].sum(0) > 0

    def histogram(self, latent, outliers: bool = False) -> tuple[Tensor, Tensor]:
        """(edges (H+1,), counts (H,)) of the latent's active values on the fixed log-spaced edges.

        outliers=True adds the underflow and overflow bins: edges (H+3,) = [0, edges..., inf], counts (H+2,).
        """
        i = self._latent(latent)
        edges, counts = self.tensors["hist_edges"], self.tensors["hist"][i]
        if outliers:
            return torch.cat([edges.new_zeros(1), edges, edges.new_full((1,), float("inf"))]), counts.clone()
        return edges.clone(), counts[1:-1].clone()

    def _examples(self, example: Tensor, score: Tensor) -> list[dict]:
        S = len(self.steps)
        return [{"image_id": e // S, "step": self.steps[e % S], "score": v}
                for e, v in zip(example.tolist(), score.tolist()) if e >= 0]

    def top_images(self, latent) -> list[dict]:
        """[{"image_id", "step", "score"}] of the highest-scoring (image, step) examples, best first, ≤ top_n."""
        i = self._latent(latent)
        return self._examples(self.tensors["top_example"][i], self.tensors["top_score"][i])

    def samples(self, latent) -> list[dict]:
        """The reservoir: a uniform sample of firing (image, step) examples, sorted by score ascending."""
        i = self._latent(latent)
        order = torch.argsort(self.tensors["sample_score"][i], stable=True)
        return self._examples(self.tensors["sample_example"][i][order], self.tensors["sample_score"][i][order])

    def quantile_sets(self, latent, n_bins: int | None = None) -> list[list[dict]]:
        """The samples cut into ``n_bins`` (default quantile_bins) activation-quantile bins of equal count
        (delphi's scheme), lowest activations first; together they partition :meth:`samples` (bins may be empty)."""
        n_bins = self.config.quantile_bins if n_bins is None else int(n_bins)
        if n_bins < 1:
            raise ValueError(f"n_bins must be positive, got {n_bins}")
        samples = self.samples(latent)
        bounds = [round(b * len(samples) / n_bins) for b in range(n_bins + 1)]
        return [samples[bounds[b] : bounds[b + 1]] for b in range(n_bins)]

    def sample_quantiles(self, latent, n: int, n_bins: int | None = None, seed: int = 0,
                         exclude: Iterable = ()) -> list[dict]:
        """About ``n`` examples, ``n // n_bins`` drawn at random from each quantile bin (all of a smaller bin),
        skipping ``exclude`` ((image_id, step) pairs or example dicts) — e.g. a test set disjoint from the
        explanation set."""
        skip = {(int(e["image_id"]), int(e["step"])) if isinstance(e, dict) else (int(e[0]), int(e[1])) for e in exclude}
        bins = self.quantile_sets(latent, n_bins)
        per_bin = max(int(n) // len(bins), 1)
        rng = np.random.default_rng([int(seed), self._latent(latent)])
        out = []
        for b, examples in enumerate(bins):
            examples = [e for e in examples if (e["image_id"], e["step"]) not in skip]
            pick = sorted(rng.choice(len(examples), size=min(per_bin, len(examples)), replace=False).tolist())
            out += [{**examples[j], "quantile": b} for j in pick]
        return out

    # ---- activation maps ------------------------------------------------------------------------------------
    def image_rows(self, image_id, step) -> Tensor:
        """(T,) store row ids of one image's tokens at ``step`` (any split's images)."""
        j = self._step(step)
        image_id = int(image_id)
        n = self.tensors["image_rows"].shape[1]
        if not 0 <= image_id < n or int(self.tensors["image_rows"][j, image_id]) == 0:
            raise ValueError(f"image {image_id} has no rows at {self.site} step {step}")
        start = int(self.tensors["image_start"][j, image_id])
        return torch.arange(start, start + int(self.tensors["image_rows"][j, image_id]))

    def _reader(self, step: int):
        if step not in self._readers:
            self._readers[step] = self.store.reader(self.site, step, "all")
        return self._readers[step]

    @torch.no_grad()
    def activation_maps(self, latent, examples: Iterable) -> list[Tensor]:
        """Activation maps of one latent on several (image_id, step) pairs or example dicts, one encode per step.

        Each map is (grid_h, grid_w) for an image-stream site, (T,) for a text one, in token order; values are
        the dictionary's codes (negative for a neuron below zero, 0 where the latent is not among the k).
        """
        i = self._latent(latent)
        pairs = [(int(e["image_id"]), int(e["step"])) if isinstance(e, dict) else (int(e[0]), int(e[1])) for e in examples]
        dictionary = self.dictionary
        device = next((t.device for t in [*dictionary.parameters(), *dictionary.buffers()]), torch.device("cpu"))
        maps: list[Tensor | None] = [None] * len(pairs)
        for step in sorted({s for _, s in pairs}):
            which = [k for k, (_, s) in enumerate(pairs) if s == step]
            rows = [self.image_rows(pairs[k][0], step) for k in which]
            reader = self._reader(step)
            all_rows = torch.cat(rows)
            values, indices = encode_rows(dictionary, reader.read_rows(all_rows).to(device), step)
            act = torch.where(indices == i, values.float(), 0.0).sum(-1).cpu()
            token = torch.from_numpy(np.asarray(reader.trace(all_rows)["token_index"], dtype=np.int64))
            lo = 0
            for k, r in zip(which, rows):
                vals, tok = act[lo : lo + len(r)], token[lo : lo + len(r)]
                lo += len(r)
                out = torch.zeros(int(tok.max()) + 1 if len(tok) else 0)
                out[tok] = vals
                if self.stream == "image" and self.grid and out.numel() == self.grid[0] * self.grid[1]:
                    out = out.reshape(self.grid)
                maps[k] = out
        return maps

    def activation_map(self, latent, image_id, step) -> Tensor:
        """(grid_h, grid_w) map of the latent over one image's tokens at ``step`` ((T,) for text sites),
        recomputed by encoding that image's store rows."""
        return self.activation_maps(latent, [(image_id, step)])[0]

    # ---- summary --------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Alive latents, tokens per step, median frequency of alive latents: what index.json shows."""
        alive = self.alive()
        freq = self.frequencies().mean(0)
        return {"alive": int(alive.sum()), "dead": int((~alive).sum()), "tokens": {str(k): v for k, v in self.tokens.items()},
                "median_frequency_alive": float(freq[alive].median()) if alive.any() else 0.0,
                "complete": self.complete}

    def __repr__(self) -> str:
        return (f"FeatureIndex({self.dictionary_kind}, {self.num_latents} latents, site {self.site}, steps {self.steps}, "
                f"split {self.split}, {sum(self.tokens.values())} tokens{'' if self.complete else ', incomplete'})")
