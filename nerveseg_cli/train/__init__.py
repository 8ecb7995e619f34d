"""``nerveseg train``: options (:mod:`.options`), the loop (:mod:`.engine`), its checkpoint
(:mod:`.state`), schedules (:mod:`.schedule`), data, augmentation and losses.

The names below load lazily, so that ``nerveseg_cli.train.options`` can be read (by the CLI,
for its defaults) without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainOptions": "options", "resolve_train_options": "resolution",
    "train": "engine", "TrainResult": "engine",
    "EpochRecord": "progress", "Reporter": "progress",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"nerveseg_cli.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
