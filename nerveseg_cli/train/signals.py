"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM (a pre-empted cloud job, ``kill``,
a batch scheduler's time limit) ask the loop to stop after the current step; the loop saves
its state and raises :class:`TrainingInterrupted`, which the CLI turns into a message and exit
code 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as shells report a process
ended by that signal. A second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TrainingInterrupted(Exception):  # noqa: N818  (an event, not a fault)
    """The run stopped on a signal after saving its state; the message says where."""

    def __init__(self, signal_number: int, message: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class StopRequest:
    """The signal that asked the loop to stop (None: none yet). Set by the handlers below, or
    by :meth:`request` (tests, an embedding program)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def request(self, signal_number: int = signal.SIGTERM) -> None:
        self.signal_number = signal_number

    def __bool__(self) -> bool:
        return self.signal_number is not None


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """While inside, SIGTERM and the first SIGINT set ``stop`` instead of ending the process
    (the loop checks it between steps); the old handlers come back on exit. Signal handlers
    can only be installed in the main thread: elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(number: int, frame: FrameType | None) -> None:
        if number == signal.SIGINT and stop.signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: do not wait for the save
        stop.request(number)

    previous = {number: signal.signal(number, handler)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
