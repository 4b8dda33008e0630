"""Shared helpers for adapter/capture tests: tiny random models (no hub), subprocess env."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

torch.set_num_threads(1)  # deterministic and polite on a shared 2-core machine

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=None)
def adapter(name: str):
    """A tiny adapter by registry name: flux-tiny, sdxl-tiny, embedded-tiny (cached: build once)."""
    from difflens.adapters import load_adapter

    return load_adapter(name)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def difflens_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "difflens.cli", *args]
