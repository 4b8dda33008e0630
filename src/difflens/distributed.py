"""torchrun plumbing shared by capture and training: join the process group, know your rank, pick a device.

Outside torchrun (WORLD_SIZE unset or 1) everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str | None) -> torch.device:
    """'auto' / None: this rank's CUDA device when there is one, else the CPU."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ok (so one rank's failure stops the others cleanly)."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([0 if ok else 1])
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: str | None = None, backend: str | None = None) -> DistContext:
    """Join the torchrun process group if launched by torchrun.

    backend None: gloo (enough for flags and barriers); training passes "nccl" on CUDA for its all-reduces.
    """
    world = launched_world_size()
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(rank, world, local, False)
    if str(device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        torch.cuda.set_device(local)
    dist.init_process_group(backend or "gloo")
    return DistContext(rank, world, local, True)
