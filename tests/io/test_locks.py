"""One writer at a time on a folder a later command continues (nerveseg_cli/io/locks.py): a
run folder, and the probability folders of ``predict`` and ``crf``; ``predict --part K/N``
writers share a folder, one writer per part.

``flock`` locks belong to an open file, so two ``open()`` calls in this process conflict as two
processes would: the unit tests use that, and the real two-process cases start a second
Python (a holder killed with kill -9, a training run caught by a second ``train --resume``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import nerveseg_cli.io.locks as locks
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.locks import FOLDER_LOCK, lock_output, part_lock_name
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, check_output_dir
from tests.conftest import assert_one_line_error, run_cli
from tests.hostile import assert_refused

pytestmark = pytest.mark.skipif(locks.fcntl is None, reason="no flock on this platform")

ME = f"pid {os.getpid()} on "
BUSY = "another process is writing this folder"
CPU = ("--device", "cpu", "--workers", "1")
TINY = ("--arch", "unet-plain", "--width", "2", "--batch-size", "4", *CPU)
# A second Python that holds a lock until killed: ARGV folder, then K/N or "-" (whole).
HOLDER = ("import sys, time\n"
          "from nerveseg_cli.io.locks import lock_output\n"
          "share = None if sys.argv[2] == '-' else tuple(map(int, sys.argv[2].split('/')))\n"
          "lock = lock_output(sys.argv[1], share)\n"
          "print('held', flush=True)\n"
          "time.sleep(300)\n")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _refused(folder: Path, share: tuple[int, int] | None = None) -> str:
    with pytest.raises(NervesegError) as caught:
        lock_output(folder, share)
    return str(caught.value)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------------------------
# the lock


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    with lock_output(tmp_path):
        record = json.loads((tmp_path / FOLDER_LOCK).read_text())
        assert record["pid"] == os.getpid() and record["since"] and record["command"]
        message = _refused(tmp_path)
        assert message.startswith(f"{tmp_path}: {BUSY} ({ME}"), message
        assert f"since {record['since']}" in message and "wait for it to end" in message
        assert "\n" not in message
    assert _names(tmp_path) == []  # released: its file goes with it
    with lock_output(tmp_path):  # and the next writer takes it
        pass


def test_a_lock_file_left_by_a_dead_process_never_blocks(tmp_path: Path) -> None:
    stale = {"pid": _dead_pid(), "host": locks.socket.gethostname(), "since": "then",
             "command": "nerveseg train --resume run"}
    (tmp_path / FOLDER_LOCK).write_text(json.dumps(stale))
    with lock_output(tmp_path):
        assert json.loads((tmp_path / FOLDER_LOCK).read_text())["pid"] == os.getpid()
    assert _names(tmp_path) == []


@pytest.mark.parametrize("record", [b"", b'{"pid": 12', b"\xff\xfe", b"[1, 2]", b'{"pid": -1}',
                                    b'{"pid": "12"}', b"x" * 10000])
def test_a_holder_without_a_readable_record_is_another_process(tmp_path: Path,
                                                               record: bytes) -> None:
    """Half-written, foreign or a dead process's record: the refusal still holds, unnamed."""
    path = tmp_path / FOLDER_LOCK
    path.write_bytes(record)
    with path.open("rb+") as holder:
        locks.fcntl.flock(holder, locks.fcntl.LOCK_EX)
        message = _refused(tmp_path)
    assert message == f"{tmp_path}: {BUSY}; wait for it to end or stop it"


def test_a_holder_in_another_process_is_named_and_a_kill_frees_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "-"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        message = _refused(tmp_path)
        assert f"{BUSY} (pid {holder.pid} on " in message, message
    finally:
        holder.kill()  # kill -9: no chance to release or remove anything
        holder.wait()
    assert _names(tmp_path) == [FOLDER_LOCK]  # its file stays, naming a dead process
    with lock_output(tmp_path):
        pass


def test_part_writers_share_a_folder_one_writer_per_part(tmp_path: Path) -> None:
    first, second = lock_output(tmp_path, (1, 2)), lock_output(tmp_path, (2, 2))
    assert _names(tmp_path) == [FOLDER_LOCK, part_lock_name(1, 2), part_lock_name(2, 2)]
    message = _refused(tmp_path, (1, 2))
    assert message.startswith(f"{tmp_path}: another process is writing --part 1/2 "
                              f"of this folder ({ME}"), message
    message = _refused(tmp_path)  # a whole-folder writer
    assert message.startswith(f"{tmp_path}: --part writers are writing this folder "
                              f"(part 1/2: {ME}"), message
    assert f"; part 2/2: {ME}" in message and "wait for them to end" in message
    first.release()
    assert _names(tmp_path) == [FOLDER_LOCK, part_lock_name(2, 2)]  # still shared by 2/2
    with lock_output(tmp_path, (1, 2)):  # part 1 again, beside part 2
        pass
    second.release()
    assert _names(tmp_path) == []  # the last holder removes the shared file
    with lock_output(tmp_path):
        assert _refused(tmp_path, (1, 2)).startswith(f"{tmp_path}: {BUSY} ({ME}")


def test_a_file_replaced_while_it_was_being_locked_is_locked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder at its end removes its file; whoever opened it just before must not lock the
    removed file (a third writer would create and lock a new one beside it)."""
    path = tmp_path / FOLDER_LOCK
    real_flock = locks.fcntl.flock
    replaced = []

    def flock_after_a_release(fd: int, operation: int) -> None:
        if not replaced:  # between this writer's open and its lock, the file is replaced
            replaced.append(True)
            path.unlink()
            path.write_text("")
        real_flock(fd, operation)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_a_release)
    with lock_output(tmp_path):
        monkeypatch.setattr(locks.fcntl, "flock", real_flock)
        assert replaced
        assert json.loads(path.read_text())["pid"] == os.getpid()  # the file there now
        assert _refused(tmp_path).startswith(f"{tmp_path}: {BUSY}")


def test_a_symlink_named_as_the_lock_file_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / FOLDER_LOCK).symlink_to(target)
    with pytest.raises(NervesegError, match=f"^{folder}: cannot write"):
        lock_output(folder)
    assert target.read_text() == "keep"


def test_without_flock_nothing_is_locked(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "fcntl", None)  # Windows
    with lock_output(tmp_path), lock_output(tmp_path):
        assert _names(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Outputs: the in-place folders of predict, crf and train


def test_an_in_place_folder_is_locked_until_the_command_ends(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    with Outputs() as outputs:
        outputs.resumable_folder(maps)
        atomic_write_text(maps / "1.png", "map")
        assert _refused(maps).startswith(f"{maps}: {BUSY} ({ME}")
        with pytest.raises(NervesegError, match=BUSY), Outputs() as second:
            second.resumable_folder(maps, resume=True)
        assert _names(maps) == [FOLDER_LOCK, "1.png"]  # the refused one changed nothing
    assert _names(maps) == ["1.png"]
    with Outputs() as outputs:  # the library used twice in one process
        outputs.resumable_folder(maps, resume=True)
    assert _names(maps) == ["1.png"]


def test_a_failed_command_leaves_no_lock_and_no_folder_it_made(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Outputs() as outputs:
        folder = outputs.resumable_folder(tmp_path / "new" / "maps")
        atomic_write_text(folder / "prediction.json", "{}")
        raise RuntimeError
    assert _names(tmp_path) == []
    with lock_output(tmp_path):
        pass


def test_a_failed_part_never_removes_the_locks_of_the_other_parts(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    other = None
    with pytest.raises(RuntimeError), Outputs() as outputs:
        outputs.resumable_folder(maps, share=(1, 2))
        other = lock_output(maps, (2, 2))  # part 2 starts in the folder part 1 made
        atomic_write_text(maps / "prediction.json", "{}")
        raise RuntimeError  # part 1 fails with no map: it removes what it added, but locks
    try:
        assert _names(maps) == [FOLDER_LOCK, part_lock_name(2, 2)]
        assert "--part 2/2" in _refused(maps, (2, 2))
        assert "--part writers" in _refused(maps)
    finally:
        other.release()
    assert _names(maps) == []


def test_a_folder_holding_only_a_left_lock_file_is_empty(tmp_path: Path) -> None:
    (tmp_path / FOLDER_LOCK).write_text(json.dumps({"pid": _dead_pid()}))
    (tmp_path / part_lock_name(3, 4)).write_text("")
    check_output_dir(tmp_path, overwrite=False)  # not "not empty"
    (tmp_path / ".nerveseg.lock.bak").write_text("")
    with pytest.raises(NervesegError, match="not empty"):
        check_output_dir(tmp_path, overwrite=False)


# --------------------------------------------------------------------------------------------
# the commands


def _start(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nerveseg_cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _holder_pid(run: Path) -> int | None:
    try:
        return json.loads((run / FOLDER_LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_train_resume_while_the_run_still_trains_is_refused(hostile_base: Path,
                                                            tmp_path: Path) -> None:
    """The re-queued job of a scheduler: ``train --resume RUN`` started while RUN's first
    process lives is refused naming it, and the run goes on alone (each epoch once)."""
    run = tmp_path / "run"
    process = _start("train", hostile_base / "folds.csv", "--fold", "0", "--epochs", "1000",
                     *TINY, "--save-every", "1", "--out", run)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "state.pt").is_file() and _holder_pid(run) == process.pid):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never got to its first save"
            time.sleep(0.05)
        result = run_cli("train", "--resume", run, "--workers", "1")
        assert_one_line_error(result, f"{run}: {BUSY} (pid {process.pid} on ",
                              f"`nerveseg train {hostile_base / 'folds.csv'}")
        assert process.poll() is None  # the first run goes on
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1].decode()
        assert process.returncode == 143, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (run / FOLDER_LOCK).exists()  # released on the way out, after the save
    epochs = pd.read_csv(run / "metrics.csv")["epoch"].tolist()
    assert epochs == list(range(1, len(epochs) + 1))
    log = (run / "train.log").read_text().splitlines()
    assert len([line for line in log if line.startswith("epoch")]) == len(epochs)
    with lock_output(run):  # free for the next resume
        pass


def test_train_into_a_held_run_is_refused_and_changes_nothing(workspace: Path) -> None:
    run = workspace / "run"
    with lock_output(run):
        assert_refused(workspace, ["train", "--resume", run, "--workers", "1"],
                       f"{run}: {BUSY} ({ME}")
        assert_refused(workspace, ["train", workspace / "folds.csv", "--fold", "0", *TINY,
                                   "--epochs", "1", "--out", run, "--overwrite"],
                       f"{run}: {BUSY} ({ME}")


def test_predict_resume_into_a_held_folder_is_refused(workspace: Path) -> None:
    maps = workspace / "maps"
    args = ["predict", workspace / "run", workspace / "data" / "test", "--out", maps, *CPU]
    assert run_cli(*args, "--part", "1/2").exit_code == 0  # half done
    with lock_output(maps):
        assert_refused(workspace, [*args, "--resume"], f"{maps}: {BUSY} ({ME}")


def test_predict_parts_run_together_one_writer_per_part(workspace: Path) -> None:
    maps = workspace / "maps"
    maps.mkdir()
    args = ["predict", workspace / "run", workspace / "data" / "test", "--out", maps,
            "--resume", *CPU]
    with lock_output(maps, (1, 2)):  # part 1 is being written
        assert_refused(workspace, [*args, "--part", "1/2"],
                       f"{maps}: another process is writing --part 1/2 of this "
                       f"folder ({ME}")
        assert_refused(workspace, args,
                       f"{maps}: --part writers are writing this folder (part 1/2: "
                       f"{ME}")
        result = run_cli(*args, "--part", "2/2")
        assert result.exit_code == 0, (result.stderr, result.exception)
        assert len(list(maps.glob("*.png"))) == 3  # its share of the 6 images
        assert FOLDER_LOCK in _names(maps)  # still part 1's
    result = run_cli(*args, "--part", "1/2")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert _names(maps) == sorted([*(f"{i}.png" for i in range(1, 7)), "prediction.json"])
    with lock_output(maps):  # a whole-folder writer holds: no part may start
        assert_refused(workspace, [*args, "--part", "2/2"], f"{maps}: {BUSY} ({ME}")


def test_predict_masks_folder_is_locked_too(workspace: Path) -> None:
    masks = workspace / "masks"
    masks.mkdir()
    with lock_output(masks):
        assert_refused(workspace, ["predict", workspace / "run", workspace / "data" / "test",
                                   "--out", workspace / "maps", "--masks", masks, *CPU],
                       f"{masks}: {BUSY} ({ME}")


def test_crf_resume_into_a_held_folder_is_refused(workspace: Path) -> None:
    out = workspace / "refined"
    out.mkdir()
    with lock_output(out):
        assert_refused(workspace, ["crf", workspace / "probs", workspace / "data" / "test",
                                   "--out", out, "--resume", "--workers", "1"],
                       f"{out}: {BUSY} ({ME}")
