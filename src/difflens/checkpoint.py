"""Training checkpoints as safetensors + JSON, crash-safe and never unpickled: one format for every trainer
(dictionaries, the embedded model and its autoencoder).

A checkpoint is published by a JSON *pointer* (e.g. ``<dictionary>/checkpoint/latest.json`` or
``<world train folder>/checkpoint.json``) and one tensor file beside it:

- ``<pointer stem>-<step:09d>.safetensors``: every tensor (weights, optimizer moments under ``optim.``,
  the torch RNG states under ``rng.``), written first;
- the pointer: counters and settings plus ``step``, ``tensors`` (the tensor file's name) and ``format``,
  replaced last.

Both are written atomically (temp file + fsync + os.replace). The pointer is the commit point: until it is
replaced it still names the previous tensor file, which is deleted only afterwards, so kill -9 at any moment
leaves the previous or the new checkpoint readable.

Older checkpoints still load: the embedded model's (the same format) and the dictionaries' earlier layout
(``latest.json`` naming a ``checkpoint-<step>/`` folder of ``state.safetensors`` + ``state.json``, optimizer
tensors under ``opt.``), whose tensors are renamed on reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import TMP_MARKER, atomic_save_tensors, atomic_write_bytes, atomic_write_json
from .reading import CorruptFileError, read_json, read_safetensors

FORMAT = 1
OPTIM = "optim."
_LEGACY_OPTIM = "opt."  # the dictionaries' optimizer prefix before the formats were merged
START_OVER = "delete it to start over"


# ---- optimizer and RNG state as tensors -------------------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Per-parameter optimizer state as ``optim.<param index>.<name>`` tensors (Adam: step, exp_avg, exp_avg_sq).

    Hyperparameters (param_groups) are not stored: a resumed run rebuilds them from its config.
    """
    return {f"{OPTIM}{i}.{name}": torch.as_tensor(value)
            for i, state in opt.state_dict()["state"].items() for name, value in state.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors`, keeping ``opt``'s current param_groups."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index_name, value in strip(tensors, OPTIM).items():
        index, name = index_name.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global torch RNG states (uint8 tensors); CUDA only where this process already uses it."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_tensors` (CUDA states only onto the same number of devices)."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    n = sum(key.startswith("rng.cuda") for key in tensors)
    if n and torch.cuda.is_available() and n == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda{i}"] for i in range(n)])


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed (a state_dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def with_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


# ---- saving and loading -----------------------------------------------------------------------------------------
def save_checkpoint(pointer: str | Path, step: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Write ``tensors`` (plus the RNG states) for ``step``, then publish them through ``pointer`` with ``info``."""
    pointer = Path(pointer)
    name = f"{pointer.stem}-{step:09d}.safetensors"
    atomic_save_tensors(pointer.parent / name, {**tensors, **rng_tensors()}, what=f"checkpoint tensors of step {step}")
    atomic_write_json(pointer, {**info, "step": step, "tensors": name, "format": FORMAT}, what="checkpoint pointer")
    for stale in [*pointer.parent.glob(f"{pointer.stem}-*.safetensors"),
                  *pointer.parent.glob(f"{pointer.stem}-*.safetensors{TMP_MARKER}*")]:
        if stale.name != name:
            stale.unlink(missing_ok=True)


def load_checkpoint(pointer: str | Path, prefixes: tuple[str, ...] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) of the checkpoint ``pointer`` names; only tensors under ``prefixes`` if given.

    Raises ValueError (CorruptFileError) naming the file for anything unreadable (a missing pointer included).
    """
    pointer = Path(pointer)
    info = checkpoint_info(pointer)
    try:
        if _is_legacy(info):
            return _load_legacy_dictionary_checkpoint(pointer.parent / info["checkpoint"], prefixes)
        tensors = _read_tensors(pointer.parent / info["tensors"], prefixes)
    except CorruptFileError:
        raise
    except Exception as err:  # noqa: BLE001 - a missing tensor file, a legacy folder without its parts
        raise _unreadable(pointer, err) from err
    return tensors, info


def checkpoint_info(pointer: str | Path) -> dict:
    """The pointer's JSON (step, settings, ...) without reading the tensors; ValueError naming it if unreadable."""
    pointer = Path(pointer)
    try:
        info = read_json(pointer, "checkpoint", hint=START_OVER, expect=dict)
    except FileNotFoundError as err:
        raise _unreadable(pointer, err) from err
    if not _is_legacy(info) and info.get("format") != FORMAT:
        raise _unreadable(pointer, f"unknown checkpoint format {info.get('format')!r}")
    return info


def _is_legacy(info: dict) -> bool:
    return "checkpoint" in info and "format" not in info


def _unreadable(pointer: Path, err: Exception | str) -> CorruptFileError:
    return CorruptFileError(pointer, "checkpoint", f"unreadable ({err})", START_OVER)


def load_latest(pointer: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """:func:`load_checkpoint`, or None when there is no pointer (nothing saved yet)."""
    return load_checkpoint(pointer) if Path(pointer).exists() else None


def _read_tensors(path: Path, prefixes: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
    keys = None if prefixes is None else (lambda key: key.startswith(prefixes))
    return read_safetensors(path, "checkpoint tensors", hint=START_OVER, keys=keys)[0]


def _load_legacy_dictionary_checkpoint(folder: Path, prefixes) -> tuple[dict[str, torch.Tensor], dict]:
    """A dictionary checkpoint of the earlier layout, its optimizer tensors renamed to ``optim.``."""
    tensors = _read_tensors(folder / "state.safetensors", None)
    tensors = {(OPTIM + k[len(_LEGACY_OPTIM):] if k.startswith(_LEGACY_OPTIM) else k): v for k, v in tensors.items()}
    if prefixes is not None:
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefixes)}
    return tensors, read_json(folder / "state.json", "checkpoint state", hint=START_OVER, expect=dict)


def trim_log(path: str | Path, step: int) -> None:
    """Keep the lines of a JSON-lines training log whose ``step`` is at most `step` (the checkpoint resumed from).

    A job killed after its last checkpoint logged steps it now trains again, and may have left a torn last line;
    without this the log would hold those steps twice.
    """
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    if "".join(kept) != text:
        atomic_write_bytes(path, "".join(kept).encode(), what="training log")
