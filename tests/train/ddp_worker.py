"""Run under torchrun by tests/train/test_distributed.py: trains each case of a JSON file in one
gloo process group and records, per process, what it trained on: the rows of every step, the first
random numbers augmentation drew, and whether the presence targets match the masks.

Not a test module (no ``test_`` prefix): it is a process of a test.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    torch.distributed.init_process_group("gloo")  # train() joins it, and leaves it to us
    rank = torch.distributed.get_rank()
    from nerveseg_cli.train import engine
    from nerveseg_cli.train.options import TrainOptions
    from nerveseg_cli.train.signals import TrainingInterrupted

    engine.STOP_POLL_STEPS = 1  # agree on a stop after every step: the tiny epochs are short
    records: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    train_step, augment = engine.Trainer.train_step, engine.augment_batch

    def recording_step(self: engine.Trainer, batch: engine.Batch, epoch: int,
                       step: int) -> torch.Tensor:
        current.update(epoch=epoch, step=step, rows=batch.index.tolist(),
                       train_rows=len(self.train_set.ids),
                       present=batch.present.tolist(),
                       masks_any=batch.masks.flatten(1).amax(1).gt(0).tolist())
        return train_step(self, batch, epoch, step)

    def recording_augment(images: torch.Tensor, masks: torch.Tensor, config: Any,
                          generator: torch.Generator, **kwargs: Any) -> Any:
        copy = torch.Generator(device=images.device)
        copy.set_state(generator.get_state())
        records.append({**current, "draws": torch.rand(4, generator=copy).tolist()})
        return augment(images, masks, config, generator, **kwargs)

    engine.Trainer.train_step = recording_step
    engine.augment_batch = recording_augment
    outcomes = {}
    for case in cases:
        current.clear()
        current["case"] = case["name"]
        options = TrainOptions(**case["options"])
        stop_at = case.get("stop_at")  # [epoch, step, rank]: that process gets SIGTERM there
        try:
            outcome = "ok"
            if stop_at is None:
                engine.train(options, case["out"])
            else:
                try:
                    engine.train(options, case["out"], reporter=Stopper(*stop_at, rank))
                    raise AssertionError("the stop signal did not stop the run")
                except TrainingInterrupted as stopped:
                    outcome = f"ok, stopped: {stopped}"
                engine.train(options, case["out"], resume=True)
            outcomes[case["name"]] = outcome
        except Exception as exc:  # noqa: BLE001  reported to the test, which fails on it
            outcomes[case["name"]] = f"{type(exc).__name__}: {exc}"
    out = Path(sys.argv[2]) / f"rank{rank}.json"
    out.write_text(json.dumps({"outcomes": outcomes, "records": records}))
    torch.distributed.destroy_process_group()


class Stopper:
    """A reporter that sends this process SIGTERM after step ``step`` of ``epoch`` when its
    rank is ``rank`` (the other process learns of it only from the agreement)."""

    def __init__(self, epoch: int, step: int, rank: int, own_rank: int) -> None:
        self.epoch, self.step_number, self.rank, self.own_rank = epoch, step, rank, own_rank
        self.at = (0, 0)

    def stage(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.at = (epoch, 0)

    def step(self) -> None:
        self.at = (self.at[0], self.at[1] + 1)
        if self.at == (self.epoch, self.step_number) and self.own_rank == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)

    def epoch_end(self, record: Any, best: bool) -> None: ...


if __name__ == "__main__":
    main()
