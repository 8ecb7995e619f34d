"""Kaggle's RLE CSV files, read strictly and written exactly (docs/formats.md, "Kaggle CSVs").

Binary (one mask per image), the Ultrasound Nerve Segmentation forms:

* ``submission``: ``img,pixels``; ``train``: ``subject,img,pixels`` (id ``SUBJECT_IMG``).

Multi-class (one mask per image and class), the later competitions' forms:

* ``long`` (Severstal 2019): ``ImageId,ClassId,EncodedPixels``, one row per image and class,
  ``ClassId`` the class index (1 = the first class after the background); columns are found by
  name, in any order;
* ``joined`` (Understanding Clouds 2019): ``Image_Label,EncodedPixels``, the id
  ``IMAGE_CLASSNAME`` (split at its last ``_``).

Every row is checked (ids safe and unique, fields complete, RLE strings by
:func:`nerveseg_cli.io.rle.parse_runs`), naming the file, the line and the id.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerveseg_cli.classes import MAX_CLASSES, Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.datasets import IdRegister, read_csv_rows, sort_ids, validate_id
from nerveseg_cli.io.rle import RleError, parse_runs
from nerveseg_cli.names import validate_name

SUBMISSION = "submission"
TRAIN = "train"
LONG = "long"
JOINED = "joined"
HEADERS = {SUBMISSION: ["img", "pixels"], TRAIN: ["subject", "img", "pixels"]}
LONG_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
JOINED_COLUMNS = ("Image_Label", "EncodedPixels")
MULTICLASS_FORMATS = (LONG, JOINED)
FORMATS = (SUBMISSION, TRAIN, LONG, JOINED)

Runs = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RleRow:
    id: str
    line: int
    pixels: str
    klass: str = ""  # multi-class forms: the ClassId (long) or class name (joined) as written


@dataclass(frozen=True)
class RleTable:
    path: Path
    format: str  # one of FORMATS
    rows: list[RleRow]

    @property
    def multiclass(self) -> bool:
        return self.format in MULTICLASS_FORMATS


def csv_format(header: Sequence[str], path: Path) -> str:
    for name, expected in HEADERS.items():
        if list(header) == expected:
            return name
    if set(LONG_COLUMNS) <= set(header):
        return LONG
    if set(JOINED_COLUMNS) <= set(header):
        return JOINED
    raise NervesegError(f"{path}: header {','.join(header)!r} is neither 'img,pixels' "
                        "(submission), 'subject,img,pixels' (train), "
                        "'ImageId,ClassId,EncodedPixels' nor 'Image_Label,EncodedPixels'")


def read_rle_csv(path: str | Path) -> RleTable:
    """Read a Kaggle CSV of any form, checking ids (safe, unique) but not yet the RLE."""
    path = Path(path)
    header, lines = read_csv_rows(path)
    fmt = csv_format(header, path)
    rows: list[RleRow] = []
    ids = IdRegister()
    for line, row in lines:
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise NervesegError(f"{where}: expected {len(header)} fields, found {len(row)}")
        parsed = _row(fmt, header, row, line, where)
        ids.add(parsed.id, where, f"on line {line}", also=parsed.klass,
                label=f" class {parsed.klass!r}" if parsed.klass else "")
        rows.append(parsed)
    return RleTable(path, fmt, rows)


def _row(fmt: str, header: Sequence[str], row: list[str], line: int, where: str) -> RleRow:
    if fmt == TRAIN:
        subject, img = row[0].strip(), row[1].strip()
        if not subject or not img:
            raise NervesegError(f"{where}: empty subject or img field")
        return RleRow(validate_id(f"{subject}_{img}", where), line, row[-1])
    if fmt == SUBMISSION:
        return RleRow(validate_id(row[0].strip(), where), line, row[-1])
    if fmt == LONG:
        cell = {name: row[header.index(name)] for name in LONG_COLUMNS}
        klass = cell["ClassId"].strip()
        if not (klass.isascii() and klass.isdigit()) or int(klass) < 1:
            raise NervesegError(f"{where}: ClassId {klass[:20]!r} is not a class index from 1")
        return RleRow(validate_id(cell["ImageId"].strip(), where), line,
                      cell["EncodedPixels"], str(int(klass)))
    label = row[header.index("Image_Label")].strip()
    image, _, name = label.rpartition("_")
    if not image or not name:
        raise NervesegError(f"{where}: Image_Label {label[:40]!r} is not IMAGE_CLASS")
    validate_name(name, where)  # it becomes a class folder's name
    return RleRow(validate_id(image, where), line, row[header.index("EncodedPixels")], name)


def parse_table(table: RleTable, size: tuple[int, int]) -> dict[str, Runs]:
    """Validate every row of a binary table into runs, naming the line of the first bad one."""
    width, height = size
    runs: dict[str, Runs] = {}
    for row in table.rows:
        runs[row.id] = _runs(table, row, height * width)
    return runs


def _runs(table: RleTable, row: RleRow, n_pixels: int) -> Runs:
    try:
        return parse_runs(row.pixels, n_pixels)
    except RleError as exc:
        raise NervesegError(f"{table.path}, line {row.line} (id {row.id}): {exc}") from None


def table_classes(table: RleTable, classes: Classes | None) -> Classes:
    """The classes of a multi-class table: ``classes`` (checked against every row), else the
    ones its rows name (``class1``.. up to the largest ClassId; joined names in order of first
    appearance)."""
    if table.format == LONG:
        top = max(table.rows, key=lambda r: int(r.klass), default=None)
        if classes is None and top is not None and int(top.klass) >= MAX_CLASSES:
            raise NervesegError(f"{table.path}, line {top.line} (id {top.id}): ClassId "
                                f"{top.klass[:20]} is beyond the {MAX_CLASSES} classes a "
                                "label map holds")
        found = classes or Classes.parse(str(int(top.klass) + 1 if top else 2))
        bad = next((r for r in table.rows if int(r.klass) >= found.count), None)
        if bad is not None:
            raise NervesegError(f"{table.path}, line {bad.line} (id {bad.id}): ClassId "
                                f"{bad.klass} is beyond --classes {','.join(found.names)} "
                                f"(ClassId 1 to {found.count - 1})")
        return found
    names = list(dict.fromkeys(r.klass for r in table.rows))
    if classes is None and ("background" in names or len(names) >= MAX_CLASSES):
        what = "names the class 'background'" if "background" in names else \
            f"names {len(names)} classes, beyond the {MAX_CLASSES - 1} after the background"
        raise NervesegError(f"{table.path}: {what}; pass --classes")
    found = classes or Classes.named(("background", *names), str(table.path)) \
        if names or classes else None
    if found is None:
        raise NervesegError(f"{table.path}: no rows, so no classes; pass --classes")
    bad = next((r for r in table.rows if r.klass not in found.foreground), None)
    if bad is not None:
        raise NervesegError(f"{table.path}, line {bad.line}: class {bad.klass!r} is not one of "
                            f"{', '.join(found.foreground)}")
    return found


def class_index(table: RleTable, row: RleRow, classes: Classes) -> int:
    return int(row.klass) if table.format == LONG else classes.names.index(row.klass)


def parse_multiclass(table: RleTable, size: tuple[int, int],
                     classes: Classes) -> dict[str, dict[int, Runs]]:
    """image id -> class index -> runs, for every image the table names (an image and class
    without a row has no runs: an empty mask)."""
    width, height = size
    found: dict[str, dict[int, Runs]] = {}
    for row in table.rows:
        found.setdefault(row.id, {})[class_index(table, row, classes)] = \
            _runs(table, row, height * width)
    return {i: found[i] for i in sort_ids(found)}


def format_rle_csv(encoded: dict[str, str], fmt: str, order: Sequence[str] | None = None) -> str:
    """Render id -> RLE as CSV text; rows in numeric id order unless ``order`` is given."""
    ids = list(order) if order is not None else sort_ids(encoded)
    out = io.StringIO()
    out.write(",".join(HEADERS[fmt]) + "\n")
    for sample_id in ids:
        if fmt == TRAIN:
            parts = sample_id.split("_")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise NervesegError(f"id {sample_id!r} is not SUBJECT_IMG, which --format train "
                                    "needs; use --format submission")
            out.write(f"{parts[0]},{parts[1]},{encoded[sample_id]}\n")
        else:
            out.write(f"{sample_id},{encoded[sample_id]}\n")
    return out.getvalue()


def format_multiclass_csv(encoded: dict[tuple[str, int], str], fmt: str, classes: Classes,
                          order: Sequence[tuple[str, int]] | None = None) -> str:
    """Render (image id, class index) -> RLE in the long or joined form, one row per pair, in
    ``order`` or by numeric id then class."""
    if fmt == JOINED:
        split = next((n for n in classes.foreground if "_" in n), None)
        if split is not None:
            raise NervesegError(f"class {split!r} holds '_', so the joined form's "
                                "IMAGE_CLASS ids (split at the last '_') cannot name it; "
                                "use the long form or a class name without '_'")
    pairs = list(order) if order is not None else \
        [(i, k) for i in sort_ids({i for i, _ in encoded}) for k in range(1, classes.count)]
    out = io.StringIO()
    out.write(",".join(LONG_COLUMNS if fmt == LONG else JOINED_COLUMNS) + "\n")
    for image, index in pairs:
        rle = encoded.get((image, index), "")
        if fmt == LONG:
            out.write(f"{image},{index},{rle}\n")
        else:
            out.write(f"{image}_{classes.names[index]},{rle}\n")
    return out.getvalue()


def read_ids_file(path: str | Path) -> list[str]:
    """Ids, in file order, from the first column of a CSV such as sample_submission.csv."""
    path = Path(path)
    header, lines = read_csv_rows(path)
    column = header.index("img") if "img" in header else header.index("id") \
        if "id" in header else 0
    ids: list[str] = []
    register = IdRegister()
    for line, row in lines:
        where = f"{path}, line {line}"
        ids.append(register.add(validate_id(row[column].strip(), where), where,
                                f"on line {line}"))
    if not ids:
        raise NervesegError(f"{path}: no ids")
    return ids


def read_pairs_file(path: str | Path, classes: Classes) -> list[tuple[str, int]]:
    """(image id, class index) rows, in file order, of a multi-class sample submission in the
    long or joined form."""
    table = read_rle_csv(path)
    if not table.multiclass:
        raise NervesegError(f"{table.path}: a binary CSV ({table.format}); --ids-from for "
                            "classes needs the long (ImageId,ClassId,...) or joined "
                            "(Image_Label,...) form")
    table_classes(table, classes)
    if not table.rows:
        raise NervesegError(f"{table.path}: no rows")
    return [(r.id, class_index(table, r, classes)) for r in table.rows]
