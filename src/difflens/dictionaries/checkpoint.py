"""Crash-safe checkpoints: safetensors + JSON, published by an atomic pointer swap.

``<dir>/checkpoint-<step>/`` holds ``state.safetensors`` (tensors) and ``state.json``
(counters, config); ``<dir>/latest.json`` names the newest complete one and is replaced with
``os.replace`` only after that folder is fully written, so kill -9 at any moment leaves either
the previous or the new checkpoint readable. Nothing is pickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .io import atomic_save_file, atomic_write_json


def rng_state() -> dict[str, torch.Tensor]:
    state = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda{i}"] = s
    return state


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"opt.{i}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], info: dict, keep: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"checkpoint-{step:09d}"
    if target.exists():
        shutil.rmtree(target)
    atomic_save_file({**tensors, **rng_state()}, target / "state.safetensors")
    atomic_write_json({**info, "step": step}, target / "state.json")
    atomic_write_json({"checkpoint": target.name}, folder / "latest.json")
    old = sorted(p for p in folder.glob("checkpoint-*") if p.is_dir() and p != target)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return target


def load_latest(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    with open(pointer) as f:
        target = folder / json.load(f)["checkpoint"]
    with open(target / "state.json") as f:
        info = json.load(f)
    return load_file(str(target / "state.safetensors")), info
