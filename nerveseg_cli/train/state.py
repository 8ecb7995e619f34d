"""``state.pt``: everything a resumed run needs besides its weights, written and read here
alone, so that the keys saved are the keys loaded.

It is read with ``torch.load(weights_only=True)`` (tensors and plain containers, no code), and
a file whose keys are not exactly :data:`STATE_KEYS` is refused.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.tensors import load_tensor_file
from nerveseg_cli.train.progress import EpochRecord

STATE_KEYS = ("epoch", "optimizer", "scheduler", "scaler", "generator", "torch_rng",
              "best_dice", "best_epoch", "history")


@dataclass
class Optimisation:
    """The stateful objects of the loop that a checkpoint carries."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # batches and augmentation draw from it


@dataclass
class TrainState:
    """Where a run stands: the last completed epoch, the best so far, the history."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)

    def to_bytes(self, loop: Optimisation) -> bytes:
        """state.pt's contents (written with the last weights, as one checkpoint)."""
        buffer = io.BytesIO()
        torch.save({
            "epoch": self.epoch, "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "scaler": loop.scaler.state_dict(),
            "generator": loop.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "best_dice": self.best_dice, "best_epoch": self.best_epoch,
            "history": json.dumps([asdict(r) for r in self.history]),
        }, buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path, loop: Optimisation) -> TrainState:
        """Read ``path`` and restore ``loop``'s objects from it."""
        data = _read(path)
        try:
            loop.optimizer.load_state_dict(data["optimizer"])
            loop.scheduler.load_state_dict(data["scheduler"])
            loop.scaler.load_state_dict(data["scaler"])
            loop.generator.set_state(data["generator"])
            torch.set_rng_state(data["torch_rng"])
            history = [EpochRecord(**row) for row in json.loads(data["history"])]
            return cls(int(data["epoch"]), float(data["best_dice"]), int(data["best_epoch"]),
                       history)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise NervesegError(f"{path}: not the state of this run ({brief(exc)})") from None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NervesegError(f"{path.parent}: nothing to resume ({path.name} missing)")
    data = load_tensor_file(path, "a nerveseg training state")
    if not isinstance(data, dict) or set(data) != set(STATE_KEYS):
        raise NervesegError(f"{path}: not a nerveseg training state (unexpected contents)")
    return data
