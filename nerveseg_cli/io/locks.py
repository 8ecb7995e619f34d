"""One writer at a time on an output that a later command continues (a run folder, the
probability folder of ``predict``/``crf`` written in place): :func:`lock_output` takes an
``flock`` on a hidden lock file inside the folder for the life of the command.

* ``flock`` locks belong to the open file and die with the process, so a writer killed with
  kill -9 never leaves a lock that blocks: its lock file may stay (with its stale holder
  record), and the next writer simply locks it again.
* The holder writes who it is (pid, host, start time, command line) into the file it holds
  exclusively, so that a refused command can name it in its one-line error.
* ``predict --part K/N`` writers share the folder: each takes the folder's lock *shared* and
  the lock of its own part (``.nerveseg.part-K-of-N.lock``) exclusively, so different parts run
  together while a second writer of one part, or a whole-folder writer, is refused.
* Lock files are removed when released; since a file can be removed while another process has
  it open, a writer that locked a file checks that its path still names that file and starts
  over if not (the holder released and removed it in between). Only a holder removes its lock
  file (a shared one: the last holder, the one that can make its lock exclusive).

On platforms without ``fcntl`` (Windows) nothing is locked: nerveseg targets Linux and macOS.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from nerveseg_cli.errors import NervesegError, write_error

try:
    import fcntl
except ImportError:  # Windows: no flock (see the module docstring)
    fcntl = None  # type: ignore[assignment]

FOLDER_LOCK = ".nerveseg.lock"
_PART_LOCK = re.compile(r"\.nerveseg\.part-(\d+)-of-(\d+)\.lock")
# A refused try is repeated for this long: a holder at its very end has its file locked while
# it removes it, and a writer that opened the file just before must not be refused for that.
SETTLE_SECONDS = 0.25
_RETRY_SECONDS = 0.05
_INFO_BYTES = 4096  # a holder record is about 200 bytes; more is not one
# O_NOFOLLOW: a planted symlink named like the lock file is an error, never written through.
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def part_lock_name(k: int, n: int) -> str:
    return f".nerveseg.part-{k}-of-{n}.lock"


def is_lock_file(name: str) -> bool:
    """Whether a folder entry is one of these lock files (never an output: an otherwise empty
    folder is empty, and a rollback leaves them to their holders)."""
    return name == FOLDER_LOCK or _PART_LOCK.fullmatch(name) is not None


@dataclass
class _Held:
    path: Path
    fd: int
    exclusive: bool


@dataclass
class OutputLock:
    """The locks one command holds on one folder; :meth:`release` (or leaving the ``with``
    block) gives them up and removes their files. ``whole``: it writes the whole folder, not
    a ``--part`` of it."""

    whole: bool = True
    held: list[_Held] = field(default_factory=list)

    def release(self) -> None:
        while self.held:
            _release(self.held.pop())

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()


def lock_output(folder: str | Path, share: tuple[int, int] | None = None) -> OutputLock:
    """Lock the existing folder ``folder`` for this process: the whole folder, or with
    ``share=(K, N)`` (N > 1) its K-th of N shares alongside the other shares' writers. Raises
    :class:`NervesegError` naming the holder when another writer has it."""
    folder = Path(folder)
    whole = share is None or share[1] == 1
    lock = OutputLock(whole)
    if fcntl is None:
        return lock
    try:
        lock.held.append(_take(folder, FOLDER_LOCK, shared=not whole))
        if not whole:
            k, n = share  # type: ignore[misc]
            lock.held.append(_take(folder, part_lock_name(k, n), shared=False))
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def folder_section(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder itself (an flock on its directory, no file made)
    for a short read-modify-write of a file that several writers of the folder share (the
    ``presence.csv`` of ``predict --part`` writers); waits for another holder."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(path: str | Path) -> OutputLock | None:
    """An exclusive lock on the file ``path`` (made if missing), with this process's record in
    it, held until released or the process ends; None, at once, while another process holds
    it. For claims that are not folders (a GPU, see nerveseg_cli/device.py)."""
    path = Path(path)
    if fcntl is None:
        return OutputLock()
    try:
        fd = _lock_file(path, shared=False, settle=0.0)
    except _Busy as busy:
        os.close(busy.fd)
        return None
    _write_info(fd)
    return OutputLock(held=[_Held(path, fd, exclusive=True)])


# --------------------------------------------------------------------------------------------
# taking and giving back one lock file


class _Busy(Exception):
    """Another writer holds the lock; ``fd`` is left open to read who."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.fd = fd


def _take(folder: Path, name: str, *, shared: bool) -> _Held:
    path = folder / name
    try:
        fd = _lock_file(path, shared)
    except _Busy as busy:
        try:
            raise _refusal(folder, name, busy.fd) from None
        finally:
            os.close(busy.fd)
    except OSError as exc:
        raise write_error(folder, exc) from None
    if not shared:
        _write_info(fd)
    return _Held(path, fd, exclusive=not shared)


def _lock_file(path: Path, shared: bool, settle: float = SETTLE_SECONDS) -> int:
    """An open descriptor of ``path`` holding its lock; :class:`_Busy` when another writer
    holds it (after ``settle`` seconds of tries)."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + settle
    while True:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _Busy(fd) from None
            os.close(fd)
            time.sleep(_RETRY_SECONDS)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed it while we opened it: lock the one there now


def _release(held: _Held) -> None:
    try:
        if not held.exclusive:
            # the last of the shared holders removes the file: the one that can make its lock
            # exclusive (others keep theirs, and the file, when this fails)
            fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(held.fd, held.path):
            held.path.unlink()
    except OSError:
        pass  # a lock file left behind never blocks anyone (module docstring)
    finally:
        os.close(held.fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


# --------------------------------------------------------------------------------------------
# who holds it


def _write_info(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command_line()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # only the refusal message of another writer reads it; the lock holds without


def _command_line() -> str:
    """This process's command line, as typed: ``nerveseg ...`` for the script and for
    ``python -m nerveseg_cli``."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if program.name == "nerveseg" or (program.name == "__main__.py"
                                      and program.parent.name == "nerveseg_cli"):
        return shlex.join(["nerveseg", *sys.argv[1:]])
    return shlex.join([str(program), *sys.argv[1:]])


def _read_info(fd: int) -> dict[str, Any] | None:
    """The holder record in an open lock file; None when it is missing, half-written or not
    one (it is only ever read to name the holder)."""
    try:
        info = json.loads(os.pread(fd, _INFO_BYTES, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any] | None) -> str | None:
    """"pid 1234 on HOST since TIME, `COMMAND`" for a live holder; None for no record, or one
    left by a process of this host that is gone."""
    if info is None or not isinstance(info.get("pid"), int) or info["pid"] <= 0:
        return None
    pid, host = info["pid"], _one_line(info.get("host", "?"))
    if host == socket.gethostname() and not _alive(pid):
        return None
    text = f"pid {pid} on {host} since {_one_line(info.get('since', '?'))}"
    if info.get("command"):
        text += f", `{_one_line(info['command'])}`"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    except (OverflowError, ValueError):
        return False  # no process has such a number
    return True


def _one_line(value: Any, most: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _held_shared(fd: int) -> bool:
    """Whether the folder lock that refused an exclusive writer is held shared (by --part
    writers): a shared lock can then be taken (and is given back at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _part_holders(folder: Path) -> list[str]:
    """"part K/N: <holder>" for each live --part writer whose record can be read."""
    parts = sorted((int(m[2]), int(m[1]), folder / m[0]) for m in
                   map(_PART_LOCK.fullmatch, (p.name for p in folder.iterdir())) if m)
    holders = []
    for n, k, path in parts:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            holder = _describe(_read_info(fd))
        finally:
            os.close(fd)
        if holder:
            holders.append(f"part {k}/{n}: {holder}")
    return holders


def _refusal(folder: Path, name: str, fd: int) -> NervesegError:
    if name == FOLDER_LOCK and _held_shared(fd):
        holders = _part_holders(folder)
        return NervesegError(f"{folder}: --part writers are writing this folder"
                             f"{_listed(holders)}; wait for them to end or stop them")
    part = _PART_LOCK.fullmatch(name)
    what = f"--part {part[1]}/{part[2]} of this folder" if part else "this folder"
    holder = _describe(_read_info(fd))
    return NervesegError(f"{folder}: another process is writing {what}"
                         f"{_listed([holder] if holder else [])}; wait for it to end or stop "
                         "it")


def _listed(holders: list[str]) -> str:
    return f" ({'; '.join(holders)})" if holders else ""
