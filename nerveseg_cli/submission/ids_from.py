"""``rle-encode --ids-from``: the ids a submission must hold (a sample submission's, or a
test folder's), compared with the maps there are, for one class or several alike."""

from __future__ import annotations

from pathlib import Path

from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.datasets import sort_ids


def compare_to_ids_from(available: set[str], wanted: list[str], source: str | Path,
                        ids_from: str | Path | None, allow_missing: bool, noun: str,
                        extra_noun: str) -> tuple[list[str], list[str]]:
    """``--ids-from``'s ids without a map (an error unless ``allow_missing``: they are written
    empty) and the maps it leaves out (a warning), for rle-encode of one class or several."""
    missing = [i for i in wanted if i not in available]
    extra = sort_ids(available - set(wanted))
    if missing and not allow_missing:
        raise NervesegError(f"{source}: {len(missing)} {noun} of {ids_from} have no prediction "
                            f"(first: {', '.join(missing[:5])}); pass --allow-missing to "
                            "write them empty")
    if extra:
        warn(f"{source}: {len(extra)} {extra_noun} are not in {ids_from} and were left out "
             f"(first: {', '.join(extra[:5])})")
    return missing, extra
