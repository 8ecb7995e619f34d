"""What a run reports: one record per epoch, the one progress interface (:class:`Reporter`),
and the log, CSV and plot made from the records."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

METRICS_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_dice",
                   "val_presence_accuracy", "seconds")


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_dice: float
    val_presence_accuracy: float
    seconds: float
    class_dice: dict[str, float] | None = None  # several classes: each one's validation Dice

    @property
    def validated(self) -> bool:
        """Whether the epoch was validated (``--fold all`` is not: its val_* are NaN)."""
        return not math.isnan(self.val_dice)


class Reporter:
    """Progress callbacks of a run; the CLI prints them with rich, ``demo`` as its own lines.

    ``epoch_end`` (and ``step`` after an optimizer step) run where the run can be saved: a
    reporter that raises (a test simulating a crash) leaves the run saved there, resumable."""

    def stage(self, text: str) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self) -> None: ...

    def epoch_end(self, record: EpochRecord, best: bool) -> None: ...


NO_VALIDATION = "no validation: model.safetensors holds the last epoch"


def format_record(record: EpochRecord, best: bool) -> str:
    """One log line per epoch, with the figures the epoch has: without validation (``--fold
    all``) no validation figures and no best, but what model.safetensors then holds."""
    text = f"epoch {record.epoch:3d}  lr {record.lr:.2e}  train loss {record.train_loss:.4f}"
    if not record.validated:
        return text + f"  {record.seconds:.1f}s  ({NO_VALIDATION})"
    text += f"  val loss {record.val_loss:.4f}  val dice {record.val_dice:.4f}"
    if record.class_dice:
        text += " (" + ", ".join(f"{k} {v:.4f}" for k, v in record.class_dice.items()) + ")"
    if not math.isnan(record.val_presence_accuracy):
        text += f"  presence acc {record.val_presence_accuracy:.3f}"
    return text + f"  {record.seconds:.1f}s" + ("  *best" if best else "")


def metrics_csv(history: list[EpochRecord]) -> str:
    """metrics.csv: one row per epoch; several classes add a ``dice_NAME`` column each. A
    figure the epoch does not have (no validation, no presence head) is an empty cell."""
    names = list(history[0].class_dice or {}) if history else []
    lines = [",".join([*METRICS_COLUMNS, *(f"dice_{n}" for n in names)])]
    for r in history:
        cells = [str(r.epoch), f"{r.lr:.6g}", _cell(r.train_loss), _cell(r.val_loss),
                 _cell(r.val_dice), _cell(r.val_presence_accuracy), f"{r.seconds:.3f}",
                 *(_cell((r.class_dice or {}).get(n, math.nan)) for n in names)]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def plot_metrics(history: list[EpochRecord], path: Path) -> None:
    """Loss and Dice curves (matplotlib, headless)."""
    if not history:
        return
    import matplotlib

    from nerveseg_cli.io.outputs import atomic_write_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in history], label="train loss")
    left.plot(epochs, [r.val_loss for r in history], label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [r.val_dice for r in history], label="validation mean Dice",
               color="tab:green")
    for name in history[0].class_dice or {}:
        right.plot(epochs, [(r.class_dice or {}).get(name) for r in history],
                   label=f"validation Dice, {name}", linestyle="--")
    right.set_xlabel("epoch")
    right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
