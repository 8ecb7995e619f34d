"""The classes of a multi-class task, declared once (``--classes``) and recorded in every output
that needs them (a run's config.json, a probability folder's classes.json), so later commands
never ask again (docs/formats.md, "Classes").

Index = position: class 0 is the background, a label map's pixel value is its class index.
Names become folder names (``probs/<class>/ID.png``) beside the files the formats reserve and,
in Understanding-Clouds CSVs, id suffixes, so they follow the name rules of
:func:`nerveseg_cli.names.validate_name`, and two names may not differ only by case (one folder
on a case-insensitive file system).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.outputs import atomic_write_text
from nerveseg_cli.lists import first_repeat, parse_list
from nerveseg_cli.names import validate_name
from nerveseg_cli.records import json_text, read_json_object

CLASSES_JSON = "classes.json"
MAX_CLASSES = 255  # label maps are 8-bit (palette PNGs hold at most 256 indices)


@dataclass(frozen=True)
class Classes:
    """Class names, index = position; ``names[0]`` is the background."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 2 <= len(self.names) <= MAX_CLASSES:
            raise NervesegError(f"--classes: {len(self.names)} classes; need 2 to "
                                f"{MAX_CLASSES} (background first)")
        for name in self.names:
            validate_name(name, "--classes")
        repeat = first_repeat(self.names, str.casefold)
        if repeat is not None:
            first, again = repeat
            raise NervesegError(
                f"--classes: the name {again!r} is given twice" if first == again else
                f"--classes: the names {first!r} and {again!r} differ only by case (one folder "
                "on a case-insensitive file system)")

    @classmethod
    def parse(cls, text: str) -> Classes:
        """``background,nerve,vessel`` (names), or ``3`` (background, class1, class2)."""
        text = text.strip()
        if re.fullmatch(r"[0-9]+", text):
            count = int(text)
            if not 2 <= count <= MAX_CLASSES:
                raise NervesegError(f"--classes {text}: need 2 to {MAX_CLASSES} classes "
                                    "(background included)")
            return cls(("background", *(f"class{i}" for i in range(1, count))))
        names = parse_list(text, "--classes", str, what="a name", distinct=False,
                           usage="write names separated by commas, background first, e.g. "
                                 "background,nerve,vessel")
        return cls(tuple(names))  # each name, and that they differ, checked there

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.names[1:]

    @property
    def binary(self) -> bool:
        """Background and one class: the binary path, exactly as without --classes."""
        return self.count == 2

    def index(self, name: str, where: str) -> int:
        if name not in self.names:
            raise NervesegError(f"{where}: class {name!r} is not one of "
                                f"{', '.join(self.names)}")
        return self.names.index(name)

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.names)}

    @classmethod
    def from_json(cls, data: Any, source: str) -> Classes:
        names = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise NervesegError(f"{source}: expected {{\"classes\": [\"background\", ...]}}")
        return cls.named(names, source)

    @classmethod
    def named(cls, names: Sequence[str], source: str) -> Classes:
        """Classes whose names a file gives (classes.json, config.json, a sidecar, a CSV's
        rows): the same checks, the error naming ``source`` rather than ``--classes``."""
        try:
            return cls(tuple(names))
        except NervesegError as exc:  # the file is what is wrong, not an option
            raise NervesegError(f"{source}: {str(exc).removeprefix('--classes: ')}") from None

    def check_same(self, other: Classes, mine: str, theirs: str) -> None:
        """Two inputs of one command must agree on the classes; the error names both."""
        if self.names != other.names:
            raise NervesegError(f"{mine} has classes {','.join(self.names)} but {theirs} has "
                                f"{','.join(other.names)}")


def read_classes(folder: str | Path) -> Classes | None:
    """The classes.json of a folder, or None when it has none (a binary folder)."""
    path = Path(folder) / CLASSES_JSON
    data = read_json_object(path)
    return None if data is None else Classes.from_json(data, str(path))


def write_classes(folder: str | Path, classes: Classes) -> None:
    atomic_write_text(Path(folder) / CLASSES_JSON,
                      json_text(classes.to_json()))


def class_record(classes: Classes | None) -> dict[str, list[str]]:
    """The class list as a prediction.json records it (nothing for a binary task), so a
    folder's provenance says what its maps are without its classes.json."""
    return {} if classes is None or classes.binary else {"classes": list(classes.names)}


def parse_classes(text: str | None) -> Classes | None:
    """``--classes`` as given (None: a binary task)."""
    return None if text is None else Classes.parse(text)


def class_names(classes: Classes | None) -> Sequence[str]:
    """The foreground names a binary task writes no folder for: none (one flat folder)."""
    return () if classes is None or classes.binary else classes.foreground


def refuse_one_class_options(what: str, *, label: int | None,
                             presence_threshold: float | None,
                             presence_from: str | Path | None) -> None:
    """Options that pick or gate one class make no sense with several: score and rle-encode
    refuse them with the same words (``what``: "scored", "encoded")."""
    if label is not None:
        raise NervesegError("--label takes one class of a label map; with several classes "
                            f"every class is {what} (drop --label)")
    if presence_threshold is not None or presence_from is not None:
        raise NervesegError("presence gating (--presence-threshold, --presence-from) takes one "
                            "class; with several, predict gates each class by its own presence")
