"""The names the formats reserve (nerveseg_cli/names.py): every name nerveseg gives a file it
writes is in the one list, and a class name is checked against it ignoring case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nerveseg_cli
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.names import RESERVED_NAMES, reserved_as, validate_name

SOURCE = Path(nerveseg_cli.__file__).parent
# a string literal that is exactly a file name of the kinds nerveseg writes
FILE_NAME = re.compile(r'"([A-Za-z_][A-Za-z0-9_.-]*\.(?:json|csv|png|log|pt|safetensors))"')


def test_every_file_name_in_the_source_is_reserved() -> None:
    """A new output file gets into the list, or this test names it."""
    found = {match for path in SOURCE.rglob("*.py")
             for match in FILE_NAME.findall(path.read_text(encoding="utf-8"))}
    assert found, "the pattern finds nothing: the test would pass whatever the list holds"
    assert found - RESERVED_NAMES == set()


def test_the_module_constants_are_reserved() -> None:
    from nerveseg_cli import classes
    from nerveseg_cli.inference import ensemble
    from nerveseg_cli.io import probmaps, runs
    from nerveseg_cli.workflow import demo

    for name in (runs.CONFIG, runs.BEST, runs.LAST, runs.STATE, runs.METRICS,
                 classes.CLASSES_JSON, probmaps.PREDICTION_JSON, probmaps.PRESENCE_CSV,
                 ensemble.WEIGHTS_CSV, demo.MARKER):
        assert name in RESERVED_NAMES, name


@given(st.sampled_from(sorted(RESERVED_NAMES)), st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_reserved_in_any_case(name: str, random) -> None:
    cased = "".join(c.swapcase() if random.random() < 0.5 else c for c in name)
    assert reserved_as(cased) == name
    with pytest.raises(NervesegError, match=rf"^w: class name {re.escape(repr(cased))} is"):
        validate_name(cased, "w")


@pytest.mark.parametrize("name", ["nerve", "metrics", "classes", "prediction.json.bak",
                                  "image", "mask", "config.json1"])
def test_names_near_a_reserved_one_are_fine(name: str) -> None:
    assert validate_name(name, "w") == name


@pytest.mark.parametrize(("name", "fragment"), [
    (".nerveseg.lock", "not a safe file name"),
    ("a/b", "not a safe file name"),
    ("..", "not a safe file name"),
    ("a\\b", "not a safe file name"),
    ("masks", "(masks)"),
])
def test_hidden_names_separators_and_folders_are_refused(name: str, fragment: str) -> None:
    with pytest.raises(NervesegError) as info:
        validate_name(name, "w")
    assert fragment in str(info.value)
