"""``state.pt``: everything a resumed run needs besides its weights, written and read here
alone, so that the keys saved are the keys loaded.

It is read with ``torch.load(weights_only=True)`` (tensors and plain containers, no code), and
a file whose keys are not exactly :data:`STATE_KEYS` (plus, since mid-epoch saves, ``progress``)
is refused.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.io.tensors import load_tensor_file
from nerveseg_cli.train.progress import EpochRecord

STATE_KEYS = ("epoch", "optimizer", "scheduler", "scaler", "generator", "torch_rng",
              "best_dice", "best_epoch", "history")
# The epoch in progress when the state was saved in its middle (a periodic save in a long
# epoch, Ctrl-C, SIGTERM); files written before mid-epoch saves existed lack it.
PROGRESS_KEY = "progress"


@dataclass
class EpochProgress:
    """How far the epoch after ``TrainState.epoch`` got: its batches (indices into the
    training set, drawn at its start), the steps done, and the loss summed so far."""

    batches: list[np.ndarray]
    step: int
    loss_sum: float = 0.0
    loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        sizes = [len(b) for b in self.batches]
        flat = np.concatenate(self.batches) if self.batches else np.zeros(0, np.int64)
        return {"batches": torch.from_numpy(flat.astype(np.int64)),
                "sizes": torch.tensor(sizes, dtype=torch.int64), "step": self.step,
                "loss_sum": self.loss_sum, "loss_count": self.loss_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochProgress:
        flat, sizes = data["batches"].numpy(), data["sizes"].tolist()
        if sum(sizes) != flat.size or not 0 < int(data["step"]) < len(sizes):
            raise ValueError("the epoch in progress does not add up")
        batches = np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
        return cls(batches, int(data["step"]), float(data["loss_sum"]),
                   int(data["loss_count"]))


@dataclass
class Optimisation:
    """The stateful objects of the loop that a checkpoint carries."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the epochs' batch order, the same in every process


@dataclass
class TrainState:
    """Where a run stands: the last completed epoch, the best so far, the history."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    progress: EpochProgress | None = None  # saved in the middle of epoch ``epoch + 1``

    def to_bytes(self, loop: Optimisation) -> bytes:
        """state.pt's contents (written with the last weights, as one checkpoint)."""
        buffer = io.BytesIO()
        progress = {} if self.progress is None else {PROGRESS_KEY: self.progress.to_dict()}
        torch.save({**progress,
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
            progress = EpochProgress.from_dict(data[PROGRESS_KEY]) \
                if PROGRESS_KEY in data else None
            state = cls(int(data["epoch"]), float(data["best_dice"]), int(data["best_epoch"]),
                        history, progress)
        except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
            raise NervesegError(f"{path}: not the state of this run ({brief(exc)})") from None
        _check_optimizer_shapes(loop.optimizer, path)
        epochs = [record.epoch for record in state.history]
        if epochs != list(range(1, state.epoch + 1)):
            raise NervesegError(f"{path}: not the state of this run (epoch {state.epoch} but "
                                f"its history holds epochs {_span(epochs)})")
        return state


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer's saved moments have the shapes of the parameters they belong to: torch
    loads another network's of as many parameters without a word, and the first step fails."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and \
                        value.shape != parameter.shape:
                    raise NervesegError(
                        f"{path}: not the state of this run (its optimizer's {name} has shape "
                        f"{list(value.shape)} for a parameter of shape {list(parameter.shape)})")


def _span(epochs: list[int]) -> str:
    return "none" if not epochs else ", ".join(map(str, epochs[:5])) + \
        (" ..." if len(epochs) > 5 else "")


def saved_progress(path: Path) -> TrainState:
    """Where a saved run stands (epochs, best, history, an epoch in progress), without the
    objects of its loop: for deciding whether anything is left to train."""
    data = _read(path)
    try:
        history = [EpochRecord(**row) for row in json.loads(data["history"])]
        progress = EpochProgress.from_dict(data[PROGRESS_KEY]) if PROGRESS_KEY in data else None
        return TrainState(int(data["epoch"]), float(data["best_dice"]), int(data["best_epoch"]),
                          history, progress)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise NervesegError(f"{path}: not the state of this run ({brief(exc)})") from None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NervesegError(f"{path.parent}: nothing to resume ({path.name} missing)")
    data = load_tensor_file(path, "a nerveseg training state")
    if not isinstance(data, dict) or set(data) - {PROGRESS_KEY} != set(STATE_KEYS):
        raise NervesegError(f"{path}: not a nerveseg training state (unexpected contents)")
    return data
