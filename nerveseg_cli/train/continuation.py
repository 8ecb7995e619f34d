"""``train --continue``: the same command line starts a run, continues it from its last save,
or finds it complete (nnU-Net's ``--c``), so a scheduler can rerun a training job as it is
after a pre-emption, a retry or a re-queue.

:func:`plan_continuation` decides from what the run folder holds, before anything is read or
written; the options are then checked against the saved ones as for ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.locks import is_lock_file
from nerveseg_cli.io.runs import CONFIG, STATE

START, CONTINUE, RESTART = "start", "continue", "restart"


@dataclass(frozen=True)
class Continuation:
    mode: str  # START (nothing there), CONTINUE (a saved state), RESTART (a run never saved)
    message: str  # what will happen, in words, for the log

    @property
    def resume(self) -> bool:
        return self.mode == CONTINUE

    @property
    def overwrite(self) -> bool:
        return self.mode == RESTART


def plan_continuation(out: str | Path) -> Continuation:
    """What ``--continue`` does with the run folder ``out``: start a new run where there is
    nothing (or an empty folder), continue one whose state was saved, and start over a run
    folder stopped before its first save (its config and epoch lines only: nothing to resume).
    A folder holding anything else is refused: --continue never overwrites what it did not
    write."""
    out = Path(out)
    entries = [p for p in out.iterdir() if not is_lock_file(p.name)] if out.is_dir() else []
    if not entries:
        return Continuation(START, f"{out}: starting a new run")
    if (out / STATE).is_file():
        return Continuation(CONTINUE, f"{out}: continuing the run from its last save")
    if (out / CONFIG).is_file():
        return Continuation(RESTART, f"{out}: starting the run over (it stopped before its "
                                     f"first save: no {STATE})")
    raise NervesegError(f"{out}: holds files but no run ({CONFIG} missing); --continue never "
                        "overwrites them: choose another --out, or remove them")
