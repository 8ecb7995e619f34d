"""Records that say one thing twice must say the same thing (docs/formats.md, "Records
checked against each other").

A run's ``config.json`` and an exported model's sidecar each hold the model and its
preprocessing (``model``, ``geometry``, ``classes``) and also the training record (``training``:
every option ``train`` ran with, ``--size``, ``--pad``, ``--in-channels``, ``--classes``...). The
training record is what the network was trained for, so a geometry, channel count or class
list that disagrees with it was edited by hand or copied from another run; using it gives
maps up to 254 grey levels off without a word. :func:`check_training_record` is the one test
both readers apply; a key the record lacks (a record written by hand, an older version) is not
compared.

No torch here: reading a sidecar is part of ``predict --engine onnxruntime``'s torch-free path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.geometry import Geometry

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class ModelFacts:
    """What a record says of the model it describes, to compare with the training record."""

    arch: str
    geometry: Geometry
    in_channels: int
    classes: Classes | None  # None: binary
    multilabel: bool
    presence: bool


EDITED = "the file was edited or mixes two runs (export or train again)"


def disagree(where: str, what: str, ours: Any, record: str, theirs: Any,
             advice: str = EDITED) -> NervesegError:
    """The one-line refusal: the file, what it says twice, both values."""
    return NervesegError(f"{where}: {what} {ours} but {record} says {theirs}; {advice}")


def check_training_record(training: Mapping[str, Any], facts: ModelFacts, where: str) -> None:
    """Refuse a record whose model or preprocessing disagrees with its own training options."""
    record = "its training record"
    geometry = _geometry_from(training)
    if geometry is not None and geometry != _shape(facts.geometry):
        raise disagree(where, "geometry", _shown(facts.geometry), record, geometry)
    for key, ours in (("arch", facts.arch), ("in_channels", facts.in_channels),
                      ("presence_head", facts.presence), ("multilabel", facts.multilabel)):
        theirs = training.get(key)
        if key in training and (bool(theirs) if isinstance(ours, bool) else theirs) != ours:
            raise disagree(where, key, ours, record, f"--{key.replace('_', '-')} {theirs}")
    if "classes" in training:
        names = _classes_from(training["classes"], where)
        ours_names = None if facts.classes is None or facts.classes.binary else \
            facts.classes.names
        if names != ours_names:
            raise disagree(where, "classes", _names(ours_names), record,
                           f"--classes {training['classes']}")


def _geometry_from(training: Mapping[str, Any]) -> str | None:
    """The geometry the training options make, as :func:`_shape` shows one; None where they
    do not fix it (``--pad``, or no ``--size``: the canvas comes from the images' sizes)."""
    if "size" not in training:
        return None
    size = training["size"]
    if size is None or training.get("pad"):
        return "pad (no --size)"
    match = _SIZE.match(str(size))
    return f"resize {match.group(1)}x{match.group(2)}" if match else f"--size {size!r}"


def _shape(geometry: Geometry) -> str:
    """A geometry compared with what the options make: a pad canvas by its mode alone."""
    return "pad (no --size)" if geometry.mode == "pad" else _shown(geometry)


def _shown(geometry: Geometry) -> str:
    return f"{geometry.mode} {geometry.width}x{geometry.height}"


def _classes_from(value: Any, where: str) -> tuple[str, ...] | None:
    """The class names ``--classes VALUE`` gives (None: the binary task)."""
    if value is None:
        return None
    try:
        classes = Classes.parse(str(value))
    except NervesegError as exc:
        raise NervesegError(f"{where}: its training record's {exc}") from None
    return None if classes.binary else classes.names


def _names(names: tuple[str, ...] | None) -> str:
    return ",".join(names) if names is not None else "none (binary)"
