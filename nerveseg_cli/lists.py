"""Options that take a list (``--batch-sizes 1,2,4``, ``--save-every 5,10m``, ``--weights``,
``--loss bce+dice``, ``--classes``), read by one parser: :func:`parse_list`.

A list is read whole or refused with one line naming the option and the value: an empty item,
an item of the wrong form, a repeat where the items must differ, and two items that say the
same thing two ways (``--save-every 5,3``: two epoch counts) are errors, never silently
dropped, merged or resolved by keeping one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from nerveseg_cli.errors import NervesegError

T = TypeVar("T")


def first_repeat(items: Iterable[T], key: Callable[[T], Hashable] = lambda item: item
                 ) -> tuple[T, T] | None:
    """The first item whose key an earlier item has, with that earlier item; None if the
    keys all differ. The one test of "given twice" (lists here, class names in classes.py)."""
    seen: dict[Hashable, T] = {}
    for item in items:
        mark = key(item)
        if mark in seen:
            return seen[mark], item
        seen[mark] = item
    return None


def parse_list(text: str, option: str, item: Callable[[str], T], *, usage: str,
               what: str, sep: str = ",", distinct: bool = True,
               key: Callable[[T], Hashable] | None = None,
               kind: Callable[[T], str] | None = None) -> list[T]:
    """``text`` split at ``sep``, each item stripped and read by ``item`` (a ValueError or
    TypeError: not ``what``), in the order given.

    ``distinct``: no two items may be equal (by ``key``, default the value itself).
    ``kind``: no two items may be of one kind (``--save-every``: one epoch count, one time).
    Every refusal is one line: ``OPTION 'TEXT': the problem; usage``.
    """
    shown = f"{option} {text!r}"
    parts = [part.strip() for part in str(text).split(sep)]
    if any(not part for part in parts):
        raise NervesegError(f"{shown}: an empty item; {usage}")
    values: list[T] = []
    for part in parts:
        try:
            values.append(item(part))
        except (ValueError, TypeError):
            raise NervesegError(f"{shown}: {part!r} is not {what}; {usage}") from None
    pairs = list(zip(parts, values, strict=True))
    if kind is not None:
        clash = first_repeat(pairs, lambda pair: kind(pair[1]))
        if clash is not None:
            raise NervesegError(f"{shown}: {clash[0][0]!r} and {clash[1][0]!r} are both "
                                f"{kind(clash[1][1])}; {usage}")
    if distinct:
        repeat = first_repeat(pairs, lambda pair: (key or _identity)(pair[1]))
        if repeat is not None:
            (first, _), (again, _) = repeat
            same = "" if first == again else f" (as {first!r})"
            raise NervesegError(f"{shown}: {again!r} is given twice{same}; {usage}")
    return values


def _identity(value: T) -> T:
    return value


def refuse_repeated_paths(paths: Sequence[str | Path], what: str, hint: str = "") -> None:
    """Inputs given as a list of paths (``ensemble A B``, ``predict RUN RUN``) name each file
    once: the same one twice (also through a symlink) is an error naming both spellings."""
    repeat = first_repeat([Path(p) for p in paths], lambda path: path.resolve())
    if repeat is not None:
        raise NervesegError(f"{repeat[1]}: {what} given twice (as {repeat[0]})"
                            + (f"; {hint}" if hint else ""))
