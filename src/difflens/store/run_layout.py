"""Where things live inside a run folder and a dictionary folder: every file name defined once, the paths built
from them, the one rule that finds a run's dictionaries, and how files of a run point at each other so that a run
folder can be moved, copied or shared (the store's own files: `store.layout`).

    RUN/                                   what `difflens demo` writes
      store/                               the activation store
      dictionaries/<name>/                 one dictionary folder each (below)
      summary.json                         the demo's metrics, analyses, interpretation, steering (paths relative to RUN)
      metrics.txt   metrics.json           the demo's tables; `difflens eval`'s metrics
      plots/   sweep/                      PNGs
      edit_bench_demo/results.json         the demo's editing benchmark

    DICTIONARY/                            one dictionary (`train --out R` writes R/<site>/)
      cfg.json                             kind, widths, ``difflens_meta``: site, step, and the store as
                                           {"relative" (to DICTIONARY), "path" (absolute, a hint), identity}
      sae.safetensors | itda.safetensors   weights (the neuron basis has none)
      normalizer.safetensors               the input normalisation
      train_log.jsonl  checkpoint/  tensorboard/
      truth.json                           ground truth (`difflens features truth`)
      index/                               feature index: index.safetensors, index.json (the store and the
                                           dictionary recorded relative to the index, plus absolute hints)
        autointerp/<backend>/results.json
        cards/latent-<i>.png  cards/grid.png
        truth.json                         ground truth of `features truth --index`
      random_floor/                        the demo's autointerp of random directions (sae_pca only)

Accepted as "a run" by every command: a demo run folder (RUN/dictionaries/<name>/), a `train --out` folder
(RUN/<name>/), a single dictionary folder, or any folder of dictionary folders (:func:`find_dictionaries`).

A recorded link is tried relative first (the run moved as a whole), then at its absolute hint (the run moved, the
store stayed); what is found there is checked against the recorded identity before it is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

# ---- a run folder ----
STORE_DIR = "store"
DICTIONARIES_DIR = "dictionaries"
SUMMARY_FILE = "summary.json"
METRICS_TABLE = "metrics.txt"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
SWEEP_DIR = "sweep"
DEMO_EDIT_BENCH_DIR = "edit_bench_demo"

# ---- a dictionary folder ----
CFG_FILE = "cfg.json"
SAE_WEIGHTS = "sae.safetensors"
ITDA_WEIGHTS = "itda.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"
TENSORBOARD_DIR = "tensorboard"
TRUTH_FILE = "truth.json"
INDEX_DIR = "index"
RANDOM_FLOOR_DIR = "random_floor"

# ---- a feature index folder ----
INDEX_TENSORS = "index.safetensors"
INDEX_HEADER = "index.json"
AUTOINTERP_DIR = "autointerp"
RESULTS_FILE = "results.json"
CARDS_DIR = "cards"

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # dictionary names are URL parts in the browser

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- paths
def store_folder(run: str | Path) -> Path:
    return Path(run) / STORE_DIR


def dictionary_folder(run: str | Path, name: str) -> Path:
    return Path(run) / DICTIONARIES_DIR / name


def summary_path(run: str | Path) -> Path:
    return Path(run) / SUMMARY_FILE


def plots_folder(run: str | Path) -> Path:
    return Path(run) / PLOTS_DIR


def cfg_path(dictionary: str | Path) -> Path:
    return Path(dictionary) / CFG_FILE


def index_folder(dictionary: str | Path) -> Path:
    return Path(dictionary) / INDEX_DIR


def truth_path(folder: str | Path) -> Path:
    """truth.json of a dictionary folder (`features truth --run`) or of an index folder (`--index`)."""
    return Path(folder) / TRUTH_FILE


def autointerp_folder(index: str | Path, backend: str) -> Path:
    return Path(index) / AUTOINTERP_DIR / backend


def autointerp_results(index: str | Path, backend: str) -> Path:
    return autointerp_folder(index, backend) / RESULTS_FILE


def autointerp_backends(index: str | Path) -> dict[str, Path]:
    """{backend: results.json} of every autointerp run on an index, by backend name."""
    base = Path(index) / AUTOINTERP_DIR
    return {p.parent.name: p for p in sorted(base.glob(f"*/{RESULTS_FILE}"))} if base.is_dir() else {}


def card_path(index: str | Path, latent: int | None = None) -> Path:
    """A feature card PNG (one latent), or the grid PNG (latent None)."""
    return Path(index) / CARDS_DIR / (f"latent-{int(latent)}.png" if latent is not None else "grid.png")


def is_dictionary(folder: str | Path) -> bool:
    return (Path(folder) / CFG_FILE).is_file()


def is_index(folder: str | Path) -> bool:
    return (Path(folder) / INDEX_TENSORS).is_file()


# ---------------------------------------------------------------------------------------------------- finding
def find_dictionaries(folder: str | Path) -> dict[str, Path]:
    """{name: dictionary folder} of everything a command may be pointed at: a single dictionary folder (named
    after itself), or a folder holding dictionaries in ``dictionaries/<name>/`` (a demo run) and/or ``<name>/``
    (a `train --out` folder, any folder of dictionaries); ``dictionaries/`` wins a name both hold.
    FileNotFoundError names the shapes looked for."""
    root = Path(folder)
    if is_dictionary(root):
        name = root.resolve().name
        return {name if NAME_RE.match(name) else "dictionary": root}
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    found: dict[str, Path] = {}
    for base in (root / DICTIONARIES_DIR, root):
        if base.is_dir():
            for p in sorted(base.iterdir()):
                if p.is_dir() and is_dictionary(p) and NAME_RE.match(p.name) and p.name not in found:
                    found[p.name] = p
    if not found:
        raise FileNotFoundError(
            f"no dictionaries in {root}: expected {root / DICTIONARIES_DIR}/<name>/{CFG_FILE} (a demo run), "
            f"{root}/<name>/{CFG_FILE} (a `train --out` folder) or {root / CFG_FILE} (one dictionary)")
    return found


def _the_only(found: dict[str, Path], folder: str | Path, what: str) -> Path:
    """The one path of ``found`` (ValueError naming the choices when ``folder`` holds several ``what``)."""
    if len(found) > 1:
        raise ValueError(f"{folder} holds {len(found)} {what} ({', '.join(found)}); pass one of them, e.g. "
                         f"{next(iter(found.values()))}")
    return next(iter(found.values()))


def one_dictionary(folder: str | Path) -> Path:
    """The dictionary of a folder that holds exactly one (ValueError naming the choices otherwise)."""
    return _the_only(find_dictionaries(folder), folder, "dictionaries")


def find_indexes(folder: str | Path) -> dict[str, Path]:
    """{name: feature index folder}: an index folder itself, or the indexes of a run's dictionaries (those built)."""
    root = Path(folder)
    if is_index(root):
        owner = root.resolve().parent if root.resolve().name == INDEX_DIR else root.resolve()
        return {owner.name: root}
    found = {name: index_folder(d) for name, d in find_dictionaries(root).items() if is_index(index_folder(d))}
    if not found:
        raise FileNotFoundError(f"no feature index in {root} (build one with `difflens features index --run {root}`)")
    return found


def one_index(folder: str | Path) -> Path:
    """The feature index of a folder that holds exactly one (ValueError naming the choices otherwise)."""
    return _the_only(find_indexes(folder), folder, "feature indexes")


# ---------------------------------------------------------------------------------------------------- links
def relative_link(target: str | Path, start: str | Path) -> str:
    """``target`` relative to the folder ``start``, as a POSIX path (how run files refer to each other)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def link_candidates(base: str | Path | None, relative: str | None, hint: str | None) -> list[Path]:
    """Where a recorded link may point now: ``base/relative`` first, then the absolute ``hint``."""
    out = []
    if base is not None and relative:
        out.append(Path(os.path.normpath(Path(base) / relative)))
    if hint:
        out.append(Path(hint))
    return list(dict.fromkeys(out))


def relative_links(folder: str | Path, **targets: str | None) -> dict[str, str]:
    """{"<name>_relative": target relative to ``folder``} of each recorded absolute ``target`` (None: skipped)."""
    return {f"{name}_relative": relative_link(target, folder) for name, target in targets.items() if target}


def open_first(candidates: list[Path], open_fn: Callable[[Path], T], what: str) -> T:
    """``open_fn`` of the first candidate that exists and is accepted (``open_fn`` raises ValueError for a folder
    that is not the recorded one). FileNotFoundError when none exists, ValueError when those found were refused."""
    tried, refused = [], []
    for path in candidates:
        if not path.exists():
            tried.append(f"{path} (missing)")
            continue
        try:
            return open_fn(path)
        except FileNotFoundError as err:
            tried.append(f"{path} ({err})")
        except ValueError as err:
            refused.append(f"{path}: {err}")
    if refused:
        raise ValueError(f"{what}: found only other ones ({'; '.join(refused)}" +
                         (f"; also tried {', '.join(tried)})" if tried else ")"))
    raise FileNotFoundError(f"{what} not found: tried {', '.join(tried) or 'nothing (no path recorded)'}")


def open_link(base: str | Path | None, relative: str | None, hint: str | None, open_fn: Callable[[Path], T],
              what: str) -> T:
    """Follow a recorded link: ``base/relative`` first, then the absolute ``hint`` (see :func:`open_first`)."""
    return open_first(link_candidates(base, relative, hint), open_fn, what)


STORE_IDENTITY = ("model", "weights", "prompts_hash", "n_images")


def store_record(store: dict | str | None, folder: str | Path) -> dict | str | None:
    """A dictionary's store record with its path relative to the dictionary ``folder`` added (``relative``), the
    absolute ``path`` kept as a hint and the identity (model, weights, prompts hash, images) as it was."""
    if isinstance(store, str):
        store = {"path": store}
    if not isinstance(store, dict) or not store.get("path"):
        return store
    return {**store, "relative": relative_link(store["path"], folder)}


def store_differences(record: dict, found: dict) -> list[str]:
    """What differs between a recorded store identity and a found store's (only recorded fields count; a
    random-model control store differs by its "control")."""
    diff = [f"{k}: recorded {record[k]!r}, found {found.get(k)!r}" for k in STORE_IDENTITY
            if record.get(k) is not None and found.get(k) != record[k]]
    if record.get("prompts_hash") is not None and record.get("control", "none") != found.get("control", "none"):
        diff.append(f"control: recorded {record.get('control', 'none')!r}, found {found.get('control', 'none')!r}")
    return diff


def find_store(folder: str | Path | None, record: dict | str | None, what: str = "the dictionary's store") -> Path:
    """The store a record points at (see :func:`store_record`), relative to ``folder`` first, then at its absolute
    hint; a store whose identity differs from the record is refused (ValueError names the differences)."""
    from difflens.store.reader import ActivationStore

    if isinstance(record, str):
        record = {"path": record}
    if not record or not (record.get("path") or record.get("relative")):
        raise ValueError(f"{what} is not recorded: pass the store (store= / --store)")

    def check(path: Path) -> Path:
        if path.is_file():  # a .safetensors file of activations: nothing to check it against
            return path
        found = ActivationStore.open(path).identity()
        diff = store_differences(record, found)
        if diff:
            raise ValueError("another capture (" + "; ".join(diff) + ")")
        return path

    return open_link(folder, record.get("relative"), record.get("path"), check, what)

