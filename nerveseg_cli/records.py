"""Dataclasses stored as JSON objects (config.json's parts, recipes' options)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="DictRecord")


class DictRecord:
    """A dataclass mixin: ``to_dict`` by field, ``from_dict`` taking the fields it knows (keys
    written by another version are ignored, missing ones take the default)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


def json_text(data: Any) -> str:
    """``data`` as indented JSON that every parser reads: NaN and infinities (a figure with
    nothing to average, e.g. the Dice on empty images when there are none) become null."""
    return json.dumps(_finite(data), indent=2, default=str) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file (prediction.json, classes.json), or None when there is none; an
    unreadable or non-object file is an error naming it."""
    from nerveseg_cli.errors import NervesegError, brief, require_file

    if not path.exists():
        return None
    require_file(path, "a JSON file")  # a folder of that name is not "none"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NervesegError(f"{path}: not valid JSON ({brief(exc)})") from None
    if not isinstance(data, dict):
        raise NervesegError(f"{path}: expected a JSON object")
    return data
