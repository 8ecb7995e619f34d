"""Dataclasses stored as JSON objects (config.json's parts, recipes' options)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
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
