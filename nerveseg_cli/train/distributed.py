"""One process per GPU under ``torchrun``: who this process is, and sums across processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process group torchrun describes in the environment (one process without it)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    def init(self, device_name: str) -> None:
        """Join the process group: NCCL between GPUs, gloo on CPUs."""
        if self.world > 1 and not torch.distributed.is_initialized():
            nccl = torch.cuda.is_available() and device_name != "cpu"
            torch.distributed.init_process_group("nccl" if nccl else "gloo")

    def reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()
