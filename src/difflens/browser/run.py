"""What the browser reads from a run folder: dictionaries, their feature indexes, autointerp results, ground truth,
the run's metrics and the store's images. Everything here is read from files stages wrote; the only computations
are light ones on request (one image's codes, nearest latents by decoder cosine), cached.

A run folder is what `difflens demo` writes (or a `train --out` folder, or one dictionary folder); its layout,
and how its dictionaries are found, is `difflens.store.run_layout`'s: summary.json (optional), dictionaries with
their feature index, autointerp results and truth.json, and the store with its images.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from difflens.store import run_layout
SORT_KEYS = ("latent", "frequency", "max", "mean", "score", "upper_precision", "auroc", "f1", "prefix")


class NotFound(Exception):
    """Unknown dictionary, latent or image: the app answers 404."""


class BadRequest(Exception):
    """A malformed query: the app answers 400 with this message."""


def _read_json(path: Path, what: str):
    """The JSON in an optional file a stage wrote: None when it is missing or unreadable, so the browser still shows
    the rest of the run; a corrupt one (truncated, garbled, empty) is also named on stderr, never silently skipped."""
    from difflens.outputs import note
    from difflens.reading import CorruptFileError, read_json

    try:
        return read_json(path, what)
    except CorruptFileError as err:
        note(f"not showing the corrupt {what} {err.path} ({err.problem}); {err.hint}")
    except OSError:
        pass
    return None


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


@dataclass
class FeatureTable:
    """Per-latent columns of one dictionary, as numpy arrays (F,), for sorting and filtering."""

    latent: np.ndarray
    frequency: np.ndarray  # mean over indexed steps of the share of tokens where the latent fires
    max: np.ndarray
    mean: np.ndarray
    score: np.ndarray  # autointerp score (nan: not explained)
    auroc: np.ndarray  # ground truth AUROC of the F1-matched concept (nan: none)
    f1: np.ndarray
    concept: list  # F1-matched ground-truth concept (recall-sensitive) or None
    explanation: list  # explanation text or None
    explanation_lower: list = field(default_factory=list)
    # the precise match (truth.json's headline): concept of the upper activation range, whether it counts in the
    # precise share, and the upper range's held-out precision (nan, None and False where truth.json lacks them)
    upper_precision: np.ndarray | None = None
    precise_concept: list = field(default_factory=list)
    precise: np.ndarray | None = None
    prefix: np.ndarray | None = None  # Matryoshka prefix level (nan: not a Matryoshka dictionary)

    def __post_init__(self):
        n = len(self.latent)
        if self.prefix is None:
            self.prefix = np.full(n, np.nan)
        if self.upper_precision is None:
            self.upper_precision = np.full(n, np.nan)
        if not self.precise_concept:
            self.precise_concept = [None] * n
        if self.precise is None:
            self.precise = np.zeros(n, dtype=bool)


class RunDictionary:
    """One dictionary folder of the run, with what stages wrote beside it (loaded lazily, cached)."""

    def __init__(self, run: "Run", name: str, folder: Path):
        self.run, self.name, self.folder = run, name, folder
        self.cfg = _read_json(run_layout.cfg_path(folder), "dictionary config") or {}
        meta = self.cfg.get("difflens_meta", {})
        self.kind = self.cfg.get("difflens_kind", "sae")
        self.site = meta.get("site")
        self.step = meta.get("step")
        self.d_in = self.cfg.get("d_in")
        self.metrics: dict = {}
        self.interpretation: dict = {}
        self._lock = threading.RLock()
        self._index = None
        self._table = None
        self._autointerp = None
        self._truth = None
        self._directions = None
        self._model = None

    # ---- files ------------------------------------------------------------------------------------------------
    @property
    def index_folder(self) -> Path:
        return run_layout.index_folder(self.folder)

    @property
    def has_index(self) -> bool:
        return run_layout.is_index(self.index_folder)

    @property
    def index(self):
        """The feature index (FeatureIndex), its store replaced by the run's store; None when there is none."""
        if not self.has_index:
            return None
        with self._lock:
            if self._index is None:
                from difflens.interpret.index import FeatureIndex

                index = FeatureIndex.load(self.index_folder)
                store = self.run.store
                if store is not None:
                    try:
                        index.store = store
                    except ValueError:
                        pass  # another store: the recorded path is used when a map is needed
                self._index = index
                self.site = index.site
        return self._index

    def model(self):
        """The dictionary weights (loaded on first use; checked against the index's fingerprint)."""
        with self._lock:
            if self._model is None:
                from difflens.dictionaries.io import load_dictionary

                self._model = load_dictionary(self.folder)
                index = self.index
                if index is not None and index._dictionary is None:
                    index.dictionary = self._model
        return self._model

    @property
    def autointerp(self) -> dict[str, dict]:
        """{backend: results.json} of every autointerp run on this dictionary's index."""
        with self._lock:
            if self._autointerp is None:
                out = {}
                for backend, path in run_layout.autointerp_backends(self.index_folder).items():
                    data = _read_json(path, "autointerp results")
                    if isinstance(data, dict) and isinstance(data.get("features"), dict):
                        out[backend] = data
                self._autointerp = out
        return self._autointerp

    @property
    def truth(self) -> dict | None:
        """truth.json (ground truth report) with a {latent: row} look-up under "_by_latent"."""
        with self._lock:
            if self._truth is None:
                data = None
                for path in (run_layout.truth_path(self.folder), run_layout.truth_path(self.index_folder)):
                    data = _read_json(path, "ground-truth report") if path.is_file() else None
                    if isinstance(data, dict):
                        break
                if isinstance(data, dict):
                    rows = data.get("latents") if isinstance(data.get("latents"), list) else []
                    data["_by_latent"] = {r["latent"]: r for r in rows
                                          if isinstance(r, dict) and type(r.get("latent")) is int}
                self._truth = data or {}
        return self._truth or None

    def explanations(self, latent: int) -> list[dict]:
        """[{backend, explanation, concept, score, balanced_accuracy, auroc, status, note}] for one latent."""
        out = []
        for backend, data in self.autointerp.items():
            rec = data["features"].get(str(latent))
            if not isinstance(rec, dict):
                continue
            exp = rec.get("explanation") if isinstance(rec.get("explanation"), dict) else {}
            out.append({"backend": backend, "explanation": str(exp.get("explanation", "") or ""),
                        "concept": exp.get("concept"), "score": _finite(rec.get("score")),
                        "balanced_accuracy": _finite(rec.get("balanced_accuracy")), "auroc": _finite(rec.get("auroc")),
                        "status": rec.get("status"), "error": rec.get("error"),
                        "note": str(exp.get("note") or data.get("note") or "")})
        return out

    # ---- the feature table --------------------------------------------------------------------------------
    @property
    def table(self) -> FeatureTable | None:
        index = self.index
        if index is None:
            return None
        with self._lock:
            if self._table is None:
                F = index.num_latents
                t = index.tensors
                tokens = t["tokens"].clamp_min(1).double()[:, None]
                freq = (t["count"].double() / tokens).mean(0).numpy()
                score = np.full(F, np.nan)
                explanation: list = [None] * F
                # the first backend with an ok record wins (oracle before openai by name order)
                for backend, data in self.autointerp.items():
                    for key, rec in data["features"].items():
                        try:
                            i = int(key)
                        except ValueError:
                            continue
                        if not (0 <= i < F) or not isinstance(rec, dict) or explanation[i] is not None:
                            continue
                        if rec.get("status", "ok") != "ok":
                            continue
                        exp = rec.get("explanation") if isinstance(rec.get("explanation"), dict) else {}
                        explanation[i] = str(exp.get("explanation", "") or "")
                        s = _finite(rec.get("score"))
                        score[i] = np.nan if s is None else s
                auroc, f1, upper = np.full(F, np.nan), np.full(F, np.nan), np.full(F, np.nan)
                concept: list = [None] * F
                precise_concept: list = [None] * F
                precise = np.zeros(F, dtype=bool)
                truth = self.truth
                if truth:
                    for i, row in truth["_by_latent"].items():
                        if not 0 <= i < F:
                            continue
                        if row.get("concept"):
                            concept[i] = str(row["concept"])
                            a, f = _finite(row.get("auroc")), _finite(row.get("f1"))
                            auroc[i] = np.nan if a is None else a
                            f1[i] = np.nan if f is None else f
                        if row.get("precise_concept"):
                            precise_concept[i] = str(row["precise_concept"])
                            precise[i] = row.get("precise") is True
                        u = _finite(row.get("upper_precision"))
                        upper[i] = np.nan if u is None else u
                self._table = FeatureTable(
                    latent=np.arange(F), frequency=freq, max=index.max_activation.numpy().astype(np.float64),
                    mean=index.mean_activation.numpy().astype(np.float64), score=score, auroc=auroc, f1=f1,
                    concept=concept, explanation=explanation,
                    explanation_lower=[" ".join((e or "", c or "", p or "")).lower()
                                       for e, c, p in zip(explanation, concept, precise_concept)],
                    upper_precision=upper, precise_concept=precise_concept, precise=precise,
                    prefix=None if (levels := index.prefix_levels()) is None else levels.numpy().astype(np.float64))
        return self._table

    def concepts(self) -> list[str]:
        """Every concept the table names: F1 matches and precise matches."""
        table = self.table
        return sorted({c for c in table.concept + table.precise_concept if c}) if table else []

    @property
    def has_precise(self) -> bool:
        """Whether truth.json carries the precise match (reports written before it do not)."""
        table = self.table
        return table is not None and any(c is not None for c in table.precise_concept)

    def query(self, q: "FeatureQuery") -> tuple[np.ndarray, int]:
        """(latent ids of the page, total matches) of a feature-table query."""
        t = self.table
        keep = np.ones(len(t.latent), dtype=bool)
        if not q.dead:
            keep &= t.frequency > 0
        for col, lo, hi in (("frequency", q.min_freq, q.max_freq), ("max", q.min_max, q.max_max),
                            ("score", q.min_score, None), ("auroc", q.min_auroc, None)):
            values = getattr(t, col)
            if lo is not None:
                keep &= values >= lo  # nan compares False: unexplained latents drop out of a score filter
            if hi is not None:
                keep &= values <= hi
        if q.concept:  # the F1 match or the precise match names it
            keep &= np.array([c == q.concept or p == q.concept for c, p in zip(t.concept, t.precise_concept)],
                             dtype=bool)
        if q.precise:
            keep &= t.precise
        if q.prefix is not None:
            keep &= t.prefix == q.prefix
        if q.q:
            needle = q.q.lower()
            keep &= np.fromiter((needle in e for e in t.explanation_lower), dtype=bool, count=len(t.latent))
        ids = np.flatnonzero(keep)
        values = getattr(t, q.sort)[ids].astype(np.float64)
        if q.order == "desc":
            values = -values
        # nan (no score / no concept) last either way; ties by latent id
        order = np.lexsort((ids, values, np.isnan(values)))
        ids = ids[order]
        start = (q.page - 1) * q.per_page
        return ids[start : start + q.per_page], len(ids)

    # ---- nearest latents by decoder cosine ------------------------------------------------------------------
    def directions(self) -> torch.Tensor:
        """(F, D) unit residual-space decoder directions (cached); a dictionary with one normaliser per step: at
        its index's first step (its residual directions differ by step)."""
        with self._lock:
            if self._directions is None:
                step = self.index.steps[0] if self.index is not None else None  # ignored with one normaliser
                self._directions = self.model().feature_directions(step=step).float().contiguous()
        return self._directions

    def nearest(self, latent: int, other: "RunDictionary", n: int = 6) -> list[tuple[int, float]]:
        """The ``n`` latents of ``other`` whose decoder direction is closest (cosine) to ``latent``'s here."""
        mine = self.directions()[latent]
        cos = other.directions() @ mine
        if other is self:
            cos = cos.clone()
            cos[latent] = -float("inf")
        k = min(n, cos.numel() - (1 if other is self else 0))
        if k <= 0:
            return []
        vals, idx = cos.topk(k)
        return [(int(i), float(v)) for i, v in zip(idx, vals)]


@dataclass
class FeatureQuery:
    """A feature-table query, parsed from URL parameters (BadRequest on anything malformed)."""

    sort: str = "frequency"
    order: str = "desc"
    page: int = 1
    per_page: int = 50
    min_freq: float | None = None
    max_freq: float | None = None
    min_max: float | None = None
    max_max: float | None = None
    min_score: float | None = None
    min_auroc: float | None = None
    concept: str | None = None
    q: str | None = None
    dead: bool = False
    precise: bool = False  # only latents that count in the precise share
    prefix: int | None = None  # only latents of this Matryoshka prefix level

    @classmethod
    def parse(cls, params) -> "FeatureQuery":
        unknown = sorted(set(params.keys()) - set(cls.__dataclass_fields__))
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}")
        q = cls()
        for key in params.keys():
            if len(params.getlist(key)) > 1:
                raise BadRequest(f"query parameter {key!r} is given more than once")
        value = params.get("sort")
        if value:
            if value not in SORT_KEYS:
                raise BadRequest(f"sort must be one of {', '.join(SORT_KEYS)}; got {value!r}")
            q.sort = value
        value = params.get("order")
        if value:
            if value not in ("asc", "desc"):
                raise BadRequest(f"order must be asc or desc; got {value!r}")
            q.order = value
        for name, lo, hi in (("page", 1, 10**9), ("per_page", 1, 500), ("prefix", 0, 10**6)):
            value = params.get(name)
            if value:
                if not re.fullmatch(r"\d{1,10}", value) or not lo <= int(value) <= hi:
                    raise BadRequest(f"{name} must be an integer in [{lo}, {hi}]; got {value[:40]!r}")
                setattr(q, name, int(value))
        for name in ("min_freq", "max_freq", "min_max", "max_max", "min_score", "min_auroc"):
            value = params.get(name)
            if value:
                try:
                    v = float(value)
                except ValueError:
                    raise BadRequest(f"{name} must be a number; got {value[:40]!r}") from None
                if not np.isfinite(v):
                    raise BadRequest(f"{name} must be a finite number; got {value[:40]!r}")
                setattr(q, name, v)
        for name in ("concept", "q"):
            value = params.get(name)
            if value:
                if len(value) > 200:
                    raise BadRequest(f"{name} is too long (at most 200 characters)")
                setattr(q, name, value)
        for name in ("dead", "precise"):
            value = params.get(name)
            if value:
                if value not in ("0", "1"):
                    raise BadRequest(f"{name} must be 0 or 1; got {value[:40]!r}")
                setattr(q, name, value == "1")
        return q

    def params(self, **changes) -> dict:
        """The query as URL parameters (defaults left out), with ``changes``."""
        base = FeatureQuery()
        out = {}
        for name in self.__dataclass_fields__:
            value = changes.get(name, getattr(self, name))
            if value is None or value == getattr(base, name):
                continue
            out[name] = int(value) if isinstance(value, bool) else value
        return out


class LRUCache:
    """Least recently used values, bounded in count and in bytes; a value many requests ask for at once is made
    once (the others wait for it) rather than once per request."""

    def __init__(self, entries: int, max_bytes: int):
        self.entries, self.max_bytes = entries, max_bytes
        self.bytes = 0
        self._items: OrderedDict = OrderedDict()  # key -> (value, its bytes)
        self._lock = threading.Lock()
        self._making: dict = {}  # key -> a lock held while its value is made

    def __len__(self) -> int:
        return len(self._items)

    def _hit(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return True, self._items[key][0]
        return False, None

    def get(self, key, make, nbytes):
        """The value of ``key``, made by ``make()`` when missing (``nbytes(value)``: its size)."""
        with self._lock:
            hit, value = self._hit(key)
            if hit:
                return value
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                hit, value = self._hit(key)
                if hit:
                    return value
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._making.pop(key, None)
                raise
            size = int(nbytes(value))
            with self._lock:
                self._items[key] = (value, size)
                self.bytes += size
                while len(self._items) > 1 and (len(self._items) > self.entries or self.bytes > self.max_bytes):
                    _, (_, dropped) = self._items.popitem(last=False)
                    self.bytes -= dropped
                self._making.pop(key, None)
        return value


class Run:
    """A run folder opened for browsing."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"run folder {root} does not exist")
        self.root = root.resolve()
        summary = _read_json(run_layout.summary_path(self.root), "run summary")
        self.summary = summary if isinstance(summary, dict) else {}
        self.dictionaries: dict[str, RunDictionary] = {
            name: RunDictionary(self, name, folder) for name, folder in run_layout.find_dictionaries(self.root).items()}
        for row in self.summary.get("metrics", []) if isinstance(self.summary.get("metrics"), list) else []:
            if isinstance(row, dict) and row.get("dictionary") in self.dictionaries:
                self.dictionaries[row["dictionary"]].metrics = row
        interp = self.summary.get("interpretation", {})
        for row in interp.get("rows", []) if isinstance(interp, dict) else []:
            if isinstance(row, dict) and row.get("dictionary") in self.dictionaries:
                self.dictionaries[row["dictionary"]].interpretation = row
        self._store = None
        self._store_lock = threading.Lock()
        # images' codes kept: 512 images and 256 MiB at most (a large model's image holds megabytes of codes); an
        # export raises the count to every image of a dictionary
        self.codes_cache = LRUCache(entries=512, max_bytes=256 * 2**20)

    def dictionary(self, name: str) -> RunDictionary:
        d = self.dictionaries.get(name) if isinstance(name, str) else None
        if d is None:
            raise NotFound(f"no dictionary named {name!r} in this run")
        return d

    def indexed(self) -> list[RunDictionary]:
        return [d for d in self.dictionaries.values() if d.has_index]

    # ---- the store --------------------------------------------------------------------------------------------
    @property
    def store(self):
        """The run's activation store: RUN/store, else the store the first index or dictionary records (relative
        to itself first, then at the absolute path it keeps as a hint)."""
        with self._store_lock:
            if self._store is None:
                from difflens.store import ActivationStore

                candidates = [run_layout.store_folder(self.root)]
                for d in self.dictionaries.values():
                    header = _read_json(d.index_folder / run_layout.INDEX_HEADER, "feature index summary") or {}
                    candidates += run_layout.link_candidates(d.index_folder, header.get("store_relative"),
                                                             header.get("store_path"))
                    store = (d.cfg.get("difflens_meta") or {}).get("store")
                    if isinstance(store, dict):
                        candidates += run_layout.link_candidates(d.folder, store.get("relative"), store.get("path"))
                try:
                    self._store = run_layout.open_first(candidates, ActivationStore.open, "the run's store")
                except (FileNotFoundError, ValueError):
                    pass  # a run without a store still browses what its files hold
        return self._store

    def image_count(self) -> int:
        store = self.store
        return len(store.prompts()) if store is not None else 0

    def image_info(self, image_id: int) -> dict:
        store = self.store
        if store is None:
            raise NotFound("this run has no activation store with images")
        if not 0 <= image_id < self.image_count():
            raise NotFound(f"no image {image_id} in this run's store (ids 0..{self.image_count() - 1})")
        info = store.image_info(image_id)
        return {"image_id": int(image_id), "prompt": str(info.get("prompt", "")), "seed": info.get("seed")}

    def image_path(self, image_id: int) -> Path:
        """The stored PNG of an image, resolved; refused (NotFound) when a symlink leads it out of the store."""
        from difflens.store import layout

        self.image_info(image_id)
        path = layout.image_path(self.store.root, image_id)
        if not path.is_file():
            raise NotFound(f"image {image_id} was not kept by the capture (captured with --no-images?)")
        real = path.resolve()
        if not real.is_relative_to(Path(self.store.root).resolve()):
            raise NotFound(f"image {image_id} is a link out of the store")
        return real

    def load_image(self, image_id: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.image_path(image_id)) as im:
            return np.asarray(im.convert("RGB"))

    # ---- files of the run (plots) -----------------------------------------------------------------------------
    def safe_file(self, relative: str, suffixes=(".png", ".json", ".txt", ".jsonl")) -> Path:
        """A file of the run by relative path, refused (NotFound) outside the run, through a symlink that leaves
        it, or with another suffix."""
        if not relative or "\x00" in relative or len(relative) > 512:
            raise NotFound("no such file")
        parts = Path(relative).parts
        if Path(relative).is_absolute() or any(p in ("..", "") for p in parts):
            raise NotFound("no such file")
        path = (self.root / relative)
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound("no such file") from None
        if not real.is_relative_to(self.root) or not real.is_file() or real.suffix.lower() not in suffixes:
            raise NotFound("no such file")
        return real

    def plots(self) -> list[str]:
        """The run's plot PNGs (paths relative to the run), as summary.json lists them: relative to the run (what
        the demo writes), or, in older summaries, a path through the run's former place whose tail is in the run."""
        out = []
        for p in self.summary.get("plots", []) if isinstance(self.summary.get("plots"), list) else []:
            parts = Path(str(p)).parts
            for i in range(len(parts)):  # the whole path first, then ever shorter tails
                rel_path = Path(*parts[i:]).as_posix()
                try:
                    self.safe_file(rel_path, (".png",))
                except NotFound:
                    continue
                out.append(rel_path)
                break
        return out

    # ---- light computations on request (cached) ---------------------------------------------------------------
    def activation_map(self, d: RunDictionary, latent: int, image_id: int, step: int) -> np.ndarray:
        """One latent's token activations on one image at one step: (grid_h, grid_w) or (T,) for text sites; the
        same values as FeatureIndex.activation_map, read off the image's cached codes (one encode per image)."""
        index = d.index
        if index is None:
            raise NotFound(f"dictionary {d.name} has no feature index")
        check_latent(d, latent)
        if step not in index.steps:
            raise BadRequest(f"step {step} is not indexed for {d.name} (steps {index.steps})")
        self.image_info(image_id)

        codes = self.image_codes(d, image_id, step)
        out = np.where(codes["indices"] == latent, codes["values"], 0.0).sum(-1).astype(np.float32)
        if index.stream == "image" and index.grid and out.size == index.grid[0] * index.grid[1]:
            out = out.reshape(index.grid)
        return out

    def image_codes(self, d: RunDictionary, image_id: int, step: int) -> dict:
        """All codes of one image's tokens at one step, with the per-token relative reconstruction error."""
        index = d.index
        if index is None:
            raise NotFound(f"dictionary {d.name} has no feature index")
        if step not in index.steps:
            raise BadRequest(f"step {step} is not indexed for {d.name} (steps {index.steps})")
        self.image_info(image_id)

        def make():
            model = d.model()
            try:
                rows = index.image_rows(image_id, step)
            except ValueError as err:
                raise NotFound(str(err)) from None
            reader = index._reader(step)
            acts = reader.read_rows(rows).float()
            recon, codes = model.reconstruct(acts, step)  # per-step normalisers: that step's
            err = ((acts - recon) ** 2).sum(-1) / (acts ** 2).sum(-1).clamp_min(1e-12)
            token = np.asarray(reader.trace(rows)["token_index"], dtype=np.int64)
            T = int(token.max()) + 1 if token.size else 0
            values = np.zeros((T, codes.values.shape[-1]), dtype=np.float32)
            indices = np.full((T, codes.values.shape[-1]), -1, dtype=np.int64)
            error = np.zeros(T, dtype=np.float32)
            values[token] = codes.values.float().numpy()
            indices[token] = codes.indices.long().numpy()
            error[token] = err.numpy()
            return {"values": values, "indices": indices, "error": error, "tokens": T}

        return self.codes_cache.get((d.name, image_id, step), make,
                                    lambda codes: sum(a.nbytes for a in codes.values() if isinstance(a, np.ndarray)))


def check_latent(d: RunDictionary, latent: int) -> None:
    index = d.index
    n = index.num_latents if index is not None else None
    if n is None or not 0 <= latent < n:
        raise NotFound(f"no latent {latent} in dictionary {d.name}" + (f" (latents 0..{n - 1})" if n else ""))


def parse_int(text: str | None, name: str, lo: int = 0, hi: int = 2**31 - 1) -> int:
    """A non-negative integer from a URL (BadRequest otherwise)."""
    if text is None or not re.fullmatch(r"-?\d{1,10}", str(text)):
        raise BadRequest(f"{name} must be an integer; got {str(text)[:40]!r}")
    v = int(text)
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}]; got {v}")
    return v
