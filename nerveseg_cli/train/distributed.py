"""One process per GPU under ``torchrun``: who this process is, joining the process group on
its own GPU, and sums across processes."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch

from nerveseg_cli.errors import NervesegError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    # Under torchrun the DistributedDataParallel path runs even with one process (its figures
    # and failures are then those of the real thing); a plain process runs without it.
    enabled: bool = False
    _owned: bool = False  # this object started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process group torchrun (or another launcher setting WORLD_SIZE > 1) describes
        in the environment; one plain process without it."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world,
                   int(os.environ.get("LOCAL_RANK", "0")), enabled=True)

    def init(self, device: torch.device) -> None:
        """Join the process group: NCCL on this process's GPU (made the current device first,
        so that nothing of this process lands on GPU 0), gloo on CPUs."""
        if not self.enabled:
            return
        if device.type == "cuda":
            if self.world > 1 and torch.cuda.device_count() > 1 and \
                    device.index != self.local_rank:
                raise NervesegError(f"--device {device}: under torchrun each process takes its "
                                    "own GPU (LOCAL_RANK); use --device cuda or auto")
            torch.cuda.set_device(device)
        if torch.distributed.is_initialized():
            return
        if device.type != "cuda":
            torch.distributed.init_process_group("gloo")
        elif "device_id" in inspect.signature(torch.distributed.init_process_group).parameters:
            torch.distributed.init_process_group("nccl", device_id=device)
        else:  # torch < 2.3
            torch.distributed.init_process_group("nccl")
        self._owned = True

    def close(self) -> None:
        """Leave the process group this object started (NCCL warns at exit otherwise)."""
        if self._owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._owned = False

    def barrier(self, device: torch.device) -> None:
        """Wait for every process (an all-reduce read back: on NCCL too, without guessing
        the barrier's device)."""
        self.reduce_sum([0.0], device)

    def reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()
