"""Writing outputs: atomic files, and :class:`Outputs`, the one place that enforces the
output rules of docs/formats.md for every command:

* an output is checked before anything is written (a file, or a non-empty folder without
  ``--overwrite``, is refused);
* no output may be an input, lie inside an input folder, or (a folder) hold an input, the
  same path reached through a symlink included;
* every write lands inside its output: an existing output folder (``--overwrite``,
  ``--resume``) that holds, at any depth, a symbolic link leaving it, or a link to a folder
  (writes through it would land on another entry), is refused before anything is written.
  Links to files inside it are kept, and a write replaces such a link, never its file. The
  output itself may be a link to a folder elsewhere (the user's choice; the guard below
  judges the folder it leads to, and the stage goes beside that folder);
* a command's outputs are written away from their place (a hidden ``.NAME.*.partial`` folder
  beside it) and put in place together when the command succeeds: every rename is planned
  and checked first (a file where the output puts a folder, or the reverse, is refused:
  such an entry is the user's), what a rename replaces is kept aside until all are made, and
  a failure undoes them, so a failed command leaves its outputs as it found them and its
  error names the output, never a stage; outputs that a ``--resume`` continues (predict,
  crf, train) are written in place (their class folders all checked before the first
  write), and a failed run removes what it added unless it is resumable;
* every file is written to a temporary file and renamed over its target only when complete,
  and a write that fails names the output, not the temporary file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from nerveseg_cli.errors import NervesegError, write_error
from nerveseg_cli.io.images import encode_image
from nerveseg_cli.io.locks import OutputLock, is_lock_file, lock_output

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new hidden temporary file ``.NAME.XXXX.tmp`` beside ``path`` (the pattern
    :func:`remove_interrupted_writes` deletes)."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path`` and rename it over ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_beside(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_interrupted_writes(folder: Path) -> None:
    """Delete the temporary files of atomic writes a killed process left (``kill -9`` lands
    between writing one and renaming it) in ``folder`` and its subfolders (class folders):
    they never became outputs, and a resumed run writes those files again."""
    for stray in [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")]:
        stray.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write several files that belong together (a checkpoint's weights and state): each goes
    to a temporary file first and all are renamed at the end, so an interruption leaves the
    old set or the new one, not a mix (but for the microseconds between the renames)."""
    temporaries: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            fd, tmp = _temporary_beside(path)
            temporaries.append((tmp, path))
            os.chmod(tmp, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        for tmp, path in temporaries:
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in temporaries:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(files[len(temporaries) - 1][0] if temporaries else files[0][0],
                          exc) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an image; the format follows the suffix (png, tif, ...)."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(array, path.suffix.lower()))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as a single-channel 0/255 image."""
    write_image(path, mask.astype(np.uint8) * 255)


def label_palette() -> list[int]:
    """The VOC colour map (class k's colour from the bits of k): 0 black, 1 dark red, 2 green,
    3 olive, ... as flat RGB values for 256 classes."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def write_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Write a label map (class indices) as a palette PNG: the values are the indices, and
    any viewer shows each class in its own colour."""
    import io

    from PIL import Image

    # an "L" image, which putpalette turns into a "P" one
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(label_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    atomic_write_bytes(path, buffer.getvalue())


def _refuse_dangling_link(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise NervesegError(f"{path}: a symbolic link to nothing ({os.readlink(path)}); give "
                            "an output path that exists, or none at all")


def check_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an output folder that is a file, or non-empty unless overwriting or resuming."""
    path = Path(path)
    _refuse_dangling_link(path)
    if path.exists() and not path.is_dir():
        raise NervesegError(f"{path}: output exists and is not a folder")
    # a lock file a killed writer left is not an output: the folder is empty without it
    if path.is_dir() and not (overwrite or resume) and \
            any(not is_lock_file(p.name) for p in path.iterdir()):
        raise NervesegError(f"{path}: output folder is not empty (pass --overwrite to write "
                            "into it)")
    refuse_links_out(path)
    return path


def refuse_links_out(folder: Path) -> None:
    """Refuse an existing output folder that holds (at any depth) a symbolic link leaving it
    or a link to a folder: what a command writes through such a link would land outside the
    output, or on another of its entries (module docstring). ``folder`` itself may be a link:
    its contents are judged against the folder it leads to."""
    if not folder.is_dir():
        return
    root = real_path(folder)
    for parent, folders, files in os.walk(folder):  # never descends into linked folders
        for name in (*folders, *files):
            link = Path(parent) / name
            if not link.is_symlink():
                continue
            target = real_path(link)
            if not target.is_relative_to(root):
                problem = f"a symbolic link to {target}, outside the output"
            elif target.is_dir():
                problem = f"a symbolic link to the folder {target}"
            else:
                continue  # a link to a file inside: a write replaces the link, never its file
            raise NervesegError(f"{link}: {problem}; writes would land there (remove the link "
                                "or choose another output)")


def prepare_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Check an output folder (see check_output_dir) and create it."""
    path = check_output_dir(path, overwrite, resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output file that is a folder, or exists unless overwriting."""
    path = Path(path)
    _refuse_dangling_link(path)
    if path.is_dir():
        raise NervesegError(f"{path}: output is a folder, expected a file name")
    if path.exists() and not overwrite:
        raise NervesegError(f"{path}: output file exists (pass --overwrite to replace it)")
    return path


# --------------------------------------------------------------------------------------------
# a command's outputs


def real_path(path: str | Path) -> Path:
    """The absolute path with every symlink resolved (for paths that do not exist yet too)."""
    return Path(os.path.realpath(os.path.abspath(path)))


@dataclass
class _Staged:
    final: Path
    stage: Path  # a hidden folder (or file) beside final
    is_folder: bool


@dataclass
class _InPlace:
    path: Path
    existed: bool
    before: set[str]
    resumable: Callable[[set[str]], bool]


@dataclass
class Outputs:
    """The outputs of one command, guarded against its inputs and written all or nothing
    (module docstring). Use as a context manager::

        with Outputs(inputs=[images]) as outputs:
            folder = outputs.folder(out, overwrite=overwrite)   # checked now
            ...  # long work, then write into folder
        # on success the folder is in place; on an error nothing of it is
    """

    inputs: list[Path] = field(default_factory=list)
    _staged: list[_Staged] = field(default_factory=list)
    _in_place: list[_InPlace] = field(default_factory=list)
    _made: list[Path] = field(default_factory=list)  # folders made for the outputs
    _locks: list[OutputLock] = field(default_factory=list)  # of the in-place folders

    def __post_init__(self) -> None:
        self.inputs = [real_path(p) for p in self.inputs if p is not None]

    def add_inputs(self, paths: Iterable[str | Path | None]) -> None:
        """More inputs (found while reading the first ones); outputs declared so far are
        checked against them too."""
        added = [real_path(p) for p in paths if p is not None]
        self.inputs.extend(added)
        for staged in self._staged:
            self._guard(staged.final, staged.is_folder, added)
        for place in self._in_place:
            self._guard(place.path, True, added)

    @classmethod
    def preflight(cls, inputs: Iterable[str | Path | None], *,
                  folders: Iterable[str | Path | None] = (),
                  files: Iterable[str | Path | None] = (), overwrite: bool = False,
                  resume: bool = False) -> None:
        """The checks of :meth:`folder` and :meth:`file`, without writing anything: for a
        command to refuse its outputs before a long pass that ends in writing them."""
        outputs = cls(list(inputs))
        for folder in folders:
            if folder is not None:
                outputs._guard(Path(folder), True)
                check_output_dir(folder, overwrite, resume)
        for file in files:
            if file is not None:
                outputs._guard(Path(file), False)
                check_output_file(file, overwrite)

    def folder(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Check an output folder and return the folder to write its contents into."""
        path = Path(path)
        self._guard(path, is_folder=True)
        check_output_dir(path, overwrite)
        stage = self._stage(path)
        self._staged.append(_Staged(path, stage, True))
        return stage

    def file(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Check an output file and return the path to write it to."""
        path = Path(path)
        self._guard(path, is_folder=False)
        check_output_file(path, overwrite)
        self._make_parents(path)
        # A hidden file beside the target, with its suffix (the format follows the suffix) and
        # in its folder (relative paths written into it stay right).
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}",
                                        dir=path.absolute().parent)
        except OSError as exc:
            raise write_error(path, exc) from None
        os.close(fd)
        os.chmod(name, 0o666 & ~_UMASK)
        self._staged.append(_Staged(path, Path(name), False))
        return Path(name)

    def resumable_folder(self, path: str | Path, *, overwrite: bool = False,
                         resume: bool = False,
                         resumable: Callable[[set[str]], bool] = lambda added: False,
                         share: tuple[int, int] | None = None) -> Path:
        """Check an output folder that a later ``--resume`` continues, create it and lock it
        until the command ends (one writer at a time, or ``share=(K, N)``: the K-th of N
        ``--part`` writers; :mod:`~nerveseg_cli.io.locks`): files go straight into it. If the
        command fails, the files it added are removed unless ``resumable(names added)`` says a
        resume can use them."""
        path = Path(path)
        self._guard(path, is_folder=True)
        check_output_dir(path, overwrite, resume)
        existed = path.is_dir()
        self._make_parents(path)
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from None
        if not existed:
            self._made.append(path)
        self._locks.append(lock_output(path, share))  # before anything in it is touched
        if resume and existed and self._locks[-1].whole:  # a part's temporary files cannot
            remove_interrupted_writes(path)  # be told from those other parts are writing
        before = {p.name for p in path.iterdir()}
        self._in_place.append(_InPlace(path, existed, before, resumable))
        return path

    def subfolders(self, folder: Path, names: Iterable[str]) -> list[Path]:
        """Create the folders ``folder/NAME`` (class folders) of a folder written in place,
        all checked first: an entry of one of these names that is not a folder is refused
        before anything is written (a staged folder's subfolders are checked at its commit)."""
        paths = [folder / name for name in names]
        for path in paths:
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise _in_the_way(path, wanted_folder=True)
        for path in paths:
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None
        return paths

    def _guard(self, path: Path, is_folder: bool, inputs: list[Path] | None = None) -> None:
        real = real_path(path)
        if inputs is None:  # a new output: it may not be one declared already
            declared = [s.final for s in self._staged] + [p.path for p in self._in_place]
            twin = next((d for d in declared if real_path(d) == real), None)
            if twin is not None:
                raise NervesegError(f"{path}: given for two outputs (also as {twin}); each "
                                    "output needs its own place")
        for source in self.inputs if inputs is None else inputs:
            if real == source:
                problem = "is also an input"
            elif real.is_relative_to(source):
                problem = f"lies inside the input {source}"
            elif is_folder and source.is_relative_to(real):
                problem = f"holds the input {source}"
            else:
                continue
            raise NervesegError(f"{path}: the output {problem}; inputs are never modified, "
                                "choose another output")

    def _make_parents(self, path: Path) -> None:
        missing = [p for p in reversed(path.absolute().parents) if not p.exists()]
        for parent in missing:
            try:
                parent.mkdir()
            except OSError as exc:
                raise write_error(path, exc) from None
            self._made.append(parent)

    def _stage(self, final: Path) -> Path:
        self._make_parents(final)
        try:
            # beside the folder a link given as the output leads to: on its file system,
            # where the commit's renames work
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                          dir=real_path(final).parent))
        except OSError as exc:
            raise write_error(final, exc) from None
        os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        return stage

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is None:
            try:
                self._commit()
            except BaseException as failure:  # the commit undid its moves; drop the stages
                self._roll_back()
                raise self._named(failure) from None
            self._unlock()
            return
        self._roll_back()
        named = self._named(error)
        if named is not error:
            raise named from None

    def _named(self, error: BaseException) -> BaseException:
        """``error`` naming each output rather than its hidden stage."""
        if not isinstance(error, NervesegError):
            return error
        message = str(error)
        for staged in self._staged:
            message = message.replace(str(staged.stage), str(staged.final))
        return error if message == str(error) else NervesegError(message)

    def _commit(self) -> None:
        """Put every staged output in place, all or nothing: every move is planned and checked
        before the first is made, what a move replaces waits in a hidden folder until all are
        made, and a move that fails undoes the ones before it."""
        plans = [(staged, _plan(staged)) for staged in self._staged]  # may refuse: none moved
        done: list[_Move] = []
        backups: list[Path] = []
        try:
            for staged, moves in plans:
                backup = None
                for index, move in enumerate(moves):
                    done.append(move)
                    if os.path.lexists(move.target):  # a file, or a link (never followed)
                        if backup is None:
                            backup = _hidden_folder(staged, ".old.partial")
                            backups.append(backup)
                        move.backup = backup / str(index)
                        os.rename(move.target, move.backup)
                    os.rename(move.source, move.target)
        except BaseException as exc:
            _undo(done, backups)
            if isinstance(exc, OSError):
                raise write_error(done[-1].target, exc) from None
            raise
        for folder in backups:
            shutil.rmtree(folder, ignore_errors=True)
        for staged in self._staged:  # what is left of a merged stage: its emptied folders
            if staged.is_folder and staged.stage.is_dir():
                shutil.rmtree(staged.stage, ignore_errors=True)

    def _unlock(self) -> None:
        """Give up the locks of the in-place folders (their files go with them)."""
        while self._locks:
            self._locks.pop().release()

    def _roll_back(self) -> None:
        for staged in self._staged:
            if staged.is_folder:
                shutil.rmtree(staged.stage, ignore_errors=True)
            else:
                staged.stage.unlink(missing_ok=True)
        for place in self._in_place:
            if not place.path.is_dir():
                continue
            added = {p.name for p in place.path.iterdir()  # lock files are their holders'
                     if not is_lock_file(p.name)} - place.before
            if added and place.resumable(added):
                continue
            for name in added:
                target = place.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        self._unlock()  # after removing what it added, before removing the folders it made
        for folder in reversed(self._made):  # children before parents
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


@dataclass
class _Move:
    """One rename of a commit: ``source`` (staged) to ``target`` (named as the user named the
    output); what sat at ``target`` waits in ``backup`` until the commit is done."""

    source: Path
    target: Path
    backup: Path | None = None


def _plan(staged: _Staged) -> list[_Move]:
    """The renames that put one staged output in place, every target checked."""
    if staged.is_folder and staged.final.is_dir():  # a link given as the output is followed
        return _plan_merge(staged.stage, staged.final)
    _check_place(staged.stage, staged.final)
    return [_Move(staged.stage, staged.final)]


def _plan_merge(stage: Path, final: Path) -> list[_Move]:
    """Merge ``stage`` into the existing folder ``final``: folders into folders, files (and
    folders new to ``final``) by rename; other entries of ``final`` are left alone."""
    if not os.access(final, os.W_OK | os.X_OK):
        raise write_error(final, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    moves = []
    for entry in sorted(stage.iterdir()):
        target = final / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            moves += _plan_merge(entry, target)
        else:
            _check_place(entry, target)
            moves.append(_Move(entry, target))
    return moves


def _check_place(entry: Path, target: Path) -> None:
    """Refuse to put a folder where a file is, or a file where a folder is. --overwrite
    replaces an output's files, but no nerveseg command writes a file where it puts a folder
    (a class folder) or the reverse, so such an entry is the user's: replacing it would
    destroy what they did not ask to lose. A link is replaced itself, never followed."""
    if target.is_symlink() or not os.path.lexists(target) or entry.is_dir() == target.is_dir():
        return
    raise _in_the_way(target, wanted_folder=entry.is_dir())


def _in_the_way(path: Path, wanted_folder: bool) -> NervesegError:
    there, wanted = ("a file", "a folder") if wanted_folder else ("a folder", "a file")
    return NervesegError(f"{path}: {there} is where the output puts {wanted}; nothing was "
                         "written (remove it or choose another output)")


def _hidden_folder(staged: _Staged, suffix: str) -> Path:
    """A new hidden folder beside ``staged``'s stage (so on its file system)."""
    return Path(tempfile.mkdtemp(prefix=f".{staged.final.name}.", suffix=suffix,
                                 dir=staged.stage.parent))


def _undo(done: list[_Move], backups: list[Path]) -> None:
    """Undo a commit's renames, last first (best effort: an entry it cannot put back stays
    in its hidden backup folder)."""
    for move in reversed(done):
        try:
            if not os.path.lexists(move.source) and os.path.lexists(move.target):
                os.rename(move.target, move.source)
            if move.backup is not None and os.path.lexists(move.backup):
                os.rename(move.backup, move.target)
        except OSError:
            continue
    for folder in backups:
        with suppress(OSError):
            folder.rmdir()  # only when empty: else it holds what could not be put back
