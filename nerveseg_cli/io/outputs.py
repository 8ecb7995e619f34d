"""Writing outputs: atomic files, and :class:`Outputs`, the one place that enforces the
output rules of docs/formats.md for every command:

* an output is checked before anything is written (a file, or a non-empty folder without
  ``--overwrite``, is refused);
* no output may be an input, lie inside an input folder, or (a folder) hold an input, the
  same path reached through a symlink included;
* a command's outputs are written away from their place (a hidden ``.NAME.*.partial`` folder
  beside it) and put in place together when the command succeeds, so a failed command leaves
  its outputs as it found them; outputs that a ``--resume`` continues (predict, crf, train)
  are written in place, and a failed run removes what it added unless it is resumable;
* every file is written to a temporary file and renamed over its target only when complete,
  and a write that fails names the output, not the temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.images import encode_image

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


def write_error(path: Path, exc: OSError) -> NervesegError:
    """A failed write, named by its output (read-only place, disk full ...)."""
    return NervesegError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})")


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
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise NervesegError(f"{path}: output folder is not empty (pass --overwrite to write "
                            "into it)")
    return path


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
                         resumable: Callable[[set[str]], bool] = lambda added: False) -> Path:
        """Check an output folder that a later ``--resume`` continues, and create it: files go
        straight into it. If the command fails, the files it added are removed unless
        ``resumable(names added)`` says a resume can use them."""
        path = Path(path)
        self._guard(path, is_folder=True)
        check_output_dir(path, overwrite, resume)
        existed = path.is_dir()
        if resume and existed:
            remove_interrupted_writes(path)
        before = {p.name for p in path.iterdir()} if existed else set()
        self._make_parents(path)
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from None
        if not existed:
            self._made.append(path)
        self._in_place.append(_InPlace(path, existed, before, resumable))
        return path

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
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                          dir=final.absolute().parent))
        except OSError as exc:
            raise write_error(final, exc) from None
        os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        return stage

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is None:
            self._commit()
            return
        self._roll_back()
        if isinstance(error, NervesegError):
            message = str(error)
            for staged in self._staged:  # name the output, not its hidden stage
                message = message.replace(str(staged.stage), str(staged.final))
            if message != str(error):
                raise NervesegError(message) from None

    def _commit(self) -> None:
        for staged in self._staged:
            if not staged.is_folder:
                os.replace(staged.stage, staged.final)
            elif not staged.final.exists():
                os.rename(staged.stage, staged.final)
            else:
                _merge_into(staged.stage, staged.final)

    def _roll_back(self) -> None:
        for staged in self._staged:
            if staged.is_folder:
                shutil.rmtree(staged.stage, ignore_errors=True)
            else:
                staged.stage.unlink(missing_ok=True)
        for place in self._in_place:
            if not place.path.is_dir():
                continue
            added = {p.name for p in place.path.iterdir()} - place.before
            if added and place.resumable(added):
                continue
            for name in added:
                target = place.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for folder in reversed(self._made):  # children before parents
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _merge_into(stage: Path, final: Path) -> None:
    """Move every entry of ``stage`` into the existing folder ``final`` (files of the same name
    are replaced, others left alone), then remove ``stage``."""
    for entry in stage.iterdir():
        target = final / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_into(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    stage.rmdir()
