"""Training checkpoints as safetensors + JSON, crash-safe and never unpickled.

A checkpoint named by `pointer` (e.g. ``checkpoint.json``) is two files beside each other:

- ``<stem>-<step:09d>.safetensors``: every tensor (weights, EMA weights, optimizer moments,
  the torch RNG state as uint8), written first;
- ``<stem>.json``: counters and config plus the name of that tensor file, replaced last.

Both are written atomically (temp file + fsync + os.replace). The JSON is the commit point: until it
is replaced it still names the previous tensor file, which is deleted only afterwards, so kill -9 at
any moment leaves the previous or the new checkpoint readable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..atomic import TMP_MARKER, atomic_write_bytes, atomic_write_json

FORMAT = 1


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "optim.") -> dict[str, torch.Tensor]:
    """Per-parameter optimizer state as `<prefix><param index>.<name>` tensors (Adam: step, exp_avg, exp_avg_sq).

    Hyperparameters (param_groups) are not stored: a resumed run rebuilds them from its config.
    """
    return {f"{prefix}{i}.{name}": torch.as_tensor(value)
            for i, state in opt.state_dict()["state"].items() for name, value in state.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           prefix: str = "optim.") -> None:
    """Inverse of `optimizer_tensors`, keeping `opt`'s current param_groups."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix):].split(".", 1)
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
    """Inverse of `rng_tensors` (CUDA states only onto the same number of devices)."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    n = sum(key.startswith("rng.cuda") for key in tensors)
    if n and torch.cuda.is_available() and n == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda{i}"] for i in range(n)])


def save_checkpoint(pointer: Path, step: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Write the tensors (plus the RNG state) for `step`, then publish them through `pointer`."""
    pointer = Path(pointer)
    name = f"{pointer.stem}-{step:09d}.safetensors"
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in {**tensors, **rng_tensors()}.items()}
    atomic_write_bytes(pointer.parent / name, safetensors_bytes(cpu))
    atomic_write_json(pointer, {**info, "step": step, "tensors": name, "format": FORMAT})
    for stale in [*pointer.parent.glob(f"{pointer.stem}-*.safetensors"),
                  *pointer.parent.glob(f"{pointer.stem}-*.safetensors{TMP_MARKER}*")]:
        if stale.name != name:
            stale.unlink(missing_ok=True)


def load_checkpoint(pointer: Path, prefixes: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) of the checkpoint `pointer` names; only tensors under `prefixes` if given.

    Raises ValueError naming the file for anything unreadable (missing pointer included).
    """
    pointer = Path(pointer)
    try:
        info = json.loads(pointer.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {info.get('format')!r}")
        tensors = {}
        with safe_open(str(pointer.parent / info["tensors"]), framework="pt") as f:
            for key in f.keys():
                if prefixes is None or key.startswith(prefixes):
                    tensors[key] = f.get_tensor(key)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        raise ValueError(f"checkpoint {pointer} is unreadable ({err}); delete it to start over") from err
    return tensors, info


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, with the prefix removed (a state_dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def with_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}
