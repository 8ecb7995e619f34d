"""Probability folders (docs/formats.md): strict reading, atomic writing, presence and provenance.

A probability folder holds

* one single-channel 8-bit PNG ``ID.png`` per image, at the image's original size, with
  value = round(255 * p(foreground)) (half levels round up);
* optionally ``presence.csv`` (``id,presence``): an image-level probability that the structure
  is present, from a model with a presence head;
* ``prediction.json``: how the folder was made (command, inputs, options, nerveseg version, and
  the provenance of the folders it was made from).

``predict``, ``ensemble`` and ``crf`` write this format; ``ensemble`` and ``crf`` read it back
strictly: a file that is not a PNG, a 16-bit PNG or a PNG with more than one channel is an error
naming the file. A mask folder written by ``rle-decode`` (0/255 PNGs) is a valid probability
folder whose probabilities are 0 and 1. Files named ``*.csv``, ``*.json``, ``*.txt`` or
``*.md``, hidden files (such as an interrupted write's temporary file) and sub-folders are
ignored when listing the maps.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nerveseg_cli import __version__
from nerveseg_cli.classes import CLASSES_JSON, Classes, read_classes
from nerveseg_cli.crosscheck import disagree
from nerveseg_cli.errors import NervesegError, require_folder, warn
from nerveseg_cli.io.datasets import IdRegister, read_csv_rows, sort_ids, validate_id
from nerveseg_cli.io.images import PNG_SIGNATURE
from nerveseg_cli.io.outputs import atomic_write_text, write_image
from nerveseg_cli.records import json_text, read_json_object

PREDICTION_JSON = "prediction.json"
PRESENCE_CSV = "presence.csv"
PRESENCE_COLUMNS = ("id", "presence")
COMPANION_SUFFIXES = (".csv", ".json", ".txt", ".md")
_PNG_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale + alpha",
                     6: "RGBA"}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


@dataclass(frozen=True)
class ProbabilityFolder:
    """A validated probability folder: its maps (by id, numeric order), their sizes, presence."""

    path: Path
    files: dict[str, Path]
    sizes: dict[str, tuple[int, int]]  # id -> (height, width), from the PNG header
    presence: dict[str, float] | None = None
    prediction: dict[str, Any] | None = None  # the parsed prediction.json, if there is one

    @property
    def ids(self) -> list[str]:
        return list(self.files)


# --------------------------------------------------------------------------------------------
# reading


def png_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of a single-channel 8-bit PNG, from its header alone.

    Raises NervesegError naming the file for anything else: not a PNG, a bit depth other than
    8 (16-bit maps are refused rather than silently rescaled), or more than one channel.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header = handle.read(33)
    except OSError as exc:
        raise NervesegError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(header) < 33 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        raise NervesegError(f"{path}: not a PNG file (a probability folder holds "
                            "single-channel 8-bit ID.png maps)")
    width = int.from_bytes(header[16:20], "big")
    height = int.from_bytes(header[20:24], "big")
    bit_depth, colour_type = header[24], header[25]
    if colour_type not in _PNG_COLOUR_TYPES:
        raise NervesegError(f"{path}: not a valid PNG (colour type {colour_type})")
    if colour_type != 0:
        raise NervesegError(
            f"{path}: {_PNG_COLOUR_TYPES[colour_type]} PNG with {_PNG_CHANNELS[colour_type]} "
            "channel(s); probability maps are single-channel 8-bit grayscale")
    if bit_depth != 8:
        raise NervesegError(f"{path}: {bit_depth}-bit PNG; probability maps are 8-bit "
                            "(value = round(255 * p))")
    if width < 1 or height < 1:
        raise NervesegError(f"{path}: PNG has an empty size {width}x{height}")
    return height, width


def read_probability_values(path: str | Path,
                            shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a probability PNG as its 8-bit values (H x W uint8, 0..255).

    ``shape`` (height, width), when given, is checked. The header is validated first (see
    ``png_shape``), so a 16-bit or colour file is never silently converted.
    """
    path = Path(path)
    expected = png_shape(path)
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None or values.dtype != np.uint8 or values.ndim != 2:
        raise NervesegError(f"{path}: PNG could not be decoded as a single-channel 8-bit map")
    if values.shape != expected:
        raise NervesegError(f"{path}: decoded size differs from its header")
    if shape is not None and values.shape != tuple(shape):
        raise NervesegError(f"{path}: map is {values.shape[1]}x{values.shape[0]}, expected "
                            f"{shape[1]}x{shape[0]}")
    return values


def list_probability_files(folder: Path) -> dict[str, Path]:
    """id -> ``ID.png`` for a probability folder, in numeric id order; strict about the rest."""
    require_folder(folder, "a probability folder (ID.png maps)")
    files: dict[str, Path] = {}
    ids = IdRegister()
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith(".") or entry.is_dir():
            continue
        suffix = entry.suffix.lower()
        if suffix in COMPANION_SUFFIXES:
            continue
        if suffix != ".png":
            raise NervesegError(f"{entry}: not a PNG file (a probability folder holds "
                                "single-channel 8-bit ID.png maps)")
        sample_id = ids.add(validate_id(entry.stem, str(folder)), str(entry), f"in {name}")
        files[sample_id] = entry
    if not files:
        raise NervesegError(f"{folder}: no probability maps (ID.png) found")
    return {i: files[i] for i in sort_ids(files)}


def read_probability_folder(path: str | Path) -> ProbabilityFolder:
    """List and validate a probability folder without decoding its maps.

    Every map's PNG header is checked (single channel, 8 bits) and its size recorded; a
    ``presence.csv`` must cover every map (extra rows get a warning); ``prediction.json``, if
    present, must be valid JSON.
    """
    folder = Path(path)
    files = list_probability_files(folder)
    sizes = {sample_id: png_shape(file) for sample_id, file in files.items()}
    presence = None
    if (folder / PRESENCE_CSV).is_file():
        presence = read_presence(folder / PRESENCE_CSV)
        lacking = [i for i in files if i not in presence]
        if lacking:
            raise NervesegError(f"{folder / PRESENCE_CSV}: no row for {len(lacking)} maps of "
                                f"the folder (first: {', '.join(lacking[:5])})")
        extra = sort_ids(set(presence) - set(files))
        if extra:
            warn(f"{folder / PRESENCE_CSV}: {len(extra)} rows have no map and are ignored "
                 f"(first: {', '.join(extra[:5])})")
        presence = {i: presence[i] for i in files}
    return ProbabilityFolder(folder, files, sizes, presence, read_prediction_json(folder))


def read_presence(path: str | Path) -> dict[str, float]:
    """Read ``presence.csv`` (``id,presence``, presence in [0, 1]) strictly, in file order."""
    path = Path(path)
    header, rows = read_csv_rows(path)
    if tuple(header[:2]) != PRESENCE_COLUMNS:
        raise NervesegError(f"{path}: header must start with id,presence, not "
                            f"{','.join(header)!r}")
    presence: dict[str, float] = {}
    ids = IdRegister()
    for line, row in rows:
        where = f"{path}, line {line}"
        if len(row) < 2:
            raise NervesegError(f"{where}: expected id,presence")
        sample_id = ids.add(validate_id(row[0].strip(), where), where, f"on line {line}")
        try:
            value = float(row[1])
        except ValueError:
            raise NervesegError(f"{where}: presence {row[1].strip()!r} is not a number") \
                from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise NervesegError(f"{where}: presence {value} is outside [0, 1]")
        presence[sample_id] = value
    return presence


def read_prediction_json(folder: str | Path) -> dict[str, Any] | None:
    """The parsed ``prediction.json`` of a folder, or None when it has none."""
    return read_json_object(Path(folder) / PREDICTION_JSON)


# --------------------------------------------------------------------------------------------
# writing


def probability_to_values(probability: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 values floor(255 * p + 0.5); uint8 input is kept.

    Values outside [0, 1] by more than rounding noise, and NaN, are a ValueError (a bug in the
    caller, not bad user input).
    """
    array = np.asarray(probability)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    low, high = float(np.min(array, initial=0.0)), float(np.max(array, initial=0.0))
    if not (low >= -1e-4 and high <= 1.0 + 1e-4):  # also catches NaN
        raise ValueError(f"probabilities must lie in [0, 1], found [{low}, {high}]")
    # float64 keeps 255 * p exact enough that the half-level rule holds to the last bit.
    scaled = array.astype(np.float64, copy=False) * 255.0 + 0.5
    return np.clip(scaled, 0, 255).astype(np.uint8)  # truncation of x + 0.5 = round half up


def write_probability(path: str | Path, probability: np.ndarray) -> None:
    """Atomically write one probability map as an 8-bit PNG (float in [0, 1] or uint8 values)."""
    values = probability_to_values(probability)
    if values.ndim != 2:
        raise ValueError(f"a probability map is 2-D, got shape {values.shape}")
    write_image(Path(path), np.ascontiguousarray(values))


def format_presence(presence: Mapping[str, float]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PRESENCE_COLUMNS)
    for sample_id in sort_ids(presence):
        writer.writerow([sample_id, f"{float(presence[sample_id]):.6f}"])
    return buffer.getvalue()


def write_presence(path: str | Path, presence: Mapping[str, float]) -> None:
    """Atomically write ``presence.csv``, rows in numeric id order, 6 decimals."""
    atomic_write_text(path, format_presence(presence))


def write_prediction_json(folder: str | Path, command: str, inputs: Mapping[str, Any],
                          options: Mapping[str, Any], *, upstream: Any = None,
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``prediction.json``: what made this folder, from what, and how.

    ``inputs`` maps a role to a path or a list of paths (written as absolute paths);
    ``upstream`` carries the prediction.json of the input folder(s), so provenance chains.
    """
    record: dict[str, Any] = {
        "command": command,
        "nerveseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {role: _absolute(value) for role, value in inputs.items()},
        "options": dict(options),
    }
    record.update(extra or {})
    if upstream is not None:
        record["upstream"] = upstream
    path = Path(folder) / PREDICTION_JSON
    atomic_write_text(path, json_text(record))
    return path


def _absolute(value: Any) -> Any:
    """Paths (alone or in lists) as absolute path strings; other values unchanged."""
    if isinstance(value, (str, Path)):
        return os.path.abspath(value)
    if isinstance(value, (list, tuple)):
        return [_absolute(v) for v in value]
    return value


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_resume(folder: str | Path, command: str, inputs: Mapping[str, Any],
                 options: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """A ``--resume`` continues only the same command, on the same inputs, with the same
    options as the folder's prediction.json records: else an error naming the first
    difference. ``ignore``: options that may differ (``--part``)."""
    previous = read_prediction_json(folder)
    if previous is None:
        return
    if previous.get("command") != command:
        raise NervesegError(f"{folder}: was written by {previous.get('command')!r}, not "
                            f"{command}; --resume only continues a {command} run")
    before = previous.get("options", {})
    for key, value in options.items():
        if key in ignore or key not in before or before[key] == _as_json(value):
            continue
        flag = "--" + key.replace("_", "-")
        raise NervesegError(f"{folder}: was written with {flag} {_shown(before[key])}, not "
                            f"{_shown(_as_json(value))}; --resume needs the same options (or "
                            "use --overwrite)")
    recorded = previous.get("inputs", {})
    for role, value in inputs.items():
        if role in recorded and recorded[role] != _absolute(value):
            raise NervesegError(f"{folder}: was made from {role} {recorded[role]}, not "
                                f"{_absolute(value)}; --resume continues the same inputs")


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


# --------------------------------------------------------------------------------------------
# several classes


def read_class_folders(path: str | Path) -> tuple[Classes, dict[str, ProbabilityFolder]]:
    """A probability folder of several classes (docs/formats.md): ``classes.json`` and one
    probability folder per foreground class, all holding the same ids at the same sizes."""
    folder = Path(path)
    classes = read_classes(folder)
    if classes is None:
        raise NervesegError(f"{folder}: no {CLASSES_JSON}; a folder of several classes has one "
                            "(and a folder per class)")
    _check_class_layout(folder, classes)
    members = {}
    for name in classes.foreground:
        members[name] = read_probability_folder(folder / name)
    _check_class_records(folder, classes, members)
    first_name, first = next(iter(members.items()))
    for name, member in members.items():
        lacking = sort_ids(set(first.files) ^ set(member.files))
        if lacking:
            where = first_name if lacking[0] not in first.files else name
            raise NervesegError(f"{folder}: {len(lacking)} ids are not in every class folder "
                                f"(first: {lacking[0]}, missing from {where}/)")
        bad = next((i for i in member.files if member.sizes[i] != first.sizes[i]), None)
        if bad is not None:
            raise NervesegError(f"{folder / name / (bad + '.png')}: size differs from "
                                f"{first_name}/{bad}.png")
    return classes, members


def _check_class_layout(folder: Path, classes: Classes) -> None:
    """classes.json against the folders present: a folder per foreground class, and no map
    or other class folder beside them (a class left out of an edited classes.json, or the
    maps of an earlier binary run, would be skipped without a word)."""
    listed = ", ".join(classes.foreground)
    for name in classes.foreground:
        if not (folder / name).is_dir():
            raise NervesegError(f"{folder}: class folder {name}/ missing ({CLASSES_JSON} names "
                                f"{listed})")
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in classes.foreground:
            continue
        if entry.is_dir():
            raise NervesegError(f"{folder}: folder {entry.name}/ is not a class of its "
                                f"{CLASSES_JSON} ({listed}); remove it, or fix {CLASSES_JSON}")
        if entry.suffix.lower() not in COMPANION_SUFFIXES:
            raise NervesegError(f"{entry}: a map beside {CLASSES_JSON}; a folder of several "
                                "classes holds its maps in a folder per class (remove it)")


def _check_class_records(folder: Path, classes: Classes,
                         members: Mapping[str, ProbabilityFolder]) -> None:
    """Each prediction.json here names the class list (and a class folder's its class):
    they must be classes.json's."""
    records = [(folder / PREDICTION_JSON, read_prediction_json(folder), None)]
    records += [(member.path / PREDICTION_JSON, member.prediction, name)
                for name, member in members.items()]
    said = f"{folder / CLASSES_JSON}"
    for path, record, name in records:
        if record is None:
            continue
        names = record.get("classes")
        if names is not None and names != list(classes.names):
            raise disagree(str(path), "classes", _joined(names), said,
                           ",".join(classes.names), CLASSES_ADVICE)
        if name is not None and record.get("class", name) != name:
            raise disagree(str(path), "class", repr(record.get("class")),
                           f"its folder's name (in {said})", repr(name), CLASSES_ADVICE)


CLASSES_ADVICE = "the folders were edited or mixed (predict again)"


def _joined(names: Any) -> str:
    return ",".join(map(str, names)) if isinstance(names, list) else repr(names)


def is_class_folder(path: str | Path) -> bool:
    """Whether a folder holds maps of several classes (it has a classes.json)."""
    return (Path(path) / CLASSES_JSON).is_file()
