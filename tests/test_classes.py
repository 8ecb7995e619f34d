"""The classes of a multi-class task: ``--classes`` by names or by count, what is refused, and
the classes.json that records them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerveseg_cli.classes import (
    CLASSES_JSON,
    MAX_CLASSES,
    Classes,
    class_names,
    parse_classes,
    read_classes,
    write_classes,
)
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.names import RESERVED_NAMES, reserved_as

SAFE_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)


def test_names_in_order_background_first() -> None:
    classes = Classes.parse("background,nerve,vessel")
    assert classes.names == ("background", "nerve", "vessel")
    assert classes.count == 3
    assert classes.foreground == ("nerve", "vessel")
    assert not classes.binary


def test_count_names_background_then_class_n() -> None:
    assert Classes.parse("3").names == ("background", "class1", "class2")
    assert Classes.parse("2").names == ("background", "class1")
    assert Classes.parse(str(MAX_CLASSES)).count == MAX_CLASSES


def test_spaces_around_names_and_spec_are_dropped() -> None:
    assert Classes.parse("  background , nerve ").names == ("background", "nerve")
    assert Classes.parse(" 3 ").count == 3


def test_two_classes_are_the_binary_path() -> None:
    assert Classes.parse("background,nerve").binary
    assert class_names(Classes.parse("background,nerve")) == ()
    assert class_names(None) == ()
    assert class_names(Classes.parse("3")) == ("class1", "class2")


def test_parse_classes_none_is_a_binary_task() -> None:
    assert parse_classes(None) is None
    assert parse_classes("4") == Classes.parse("4")


def test_index_of_a_name_and_an_unknown_name() -> None:
    classes = Classes.parse("background,nerve,vessel")
    assert classes.index("vessel", "here") == 2
    with pytest.raises(NervesegError, match=r"here: class 'artery' is not one of "
                                            r"background, nerve, vessel"):
        classes.index("artery", "here")


@pytest.mark.parametrize(("spec", "fragment"), [
    ("0", "need 2 to 255 classes"),
    ("1", "need 2 to 255 classes"),
    ("01", "need 2 to 255 classes"),
    (str(MAX_CLASSES + 1), "need 2 to 255 classes"),
    ("background", "1 classes; need 2 to 255"),
    ("background,nerve,nerve", "the name 'nerve' is given twice"),
    ("nerve,background,nerve", "the name 'nerve' is given twice"),
    ("background,,vessel", "an empty item"),
    ("background,nerve,", "an empty item"),
    (",nerve", "an empty item"),
    ("", "an empty item"),
    ("background, ", "an empty item"),
    ("background,blood vessel", "'blood vessel' is not a safe file name"),
    ("background,../nerve", "is not a safe file name"),
    ("background,a/b", "is not a safe file name"),
    ("background,.hidden", "is not a safe file name"),
    ("background,a..b", "is not a safe file name"),
    ("background,ner;ve", "is not a safe file name"),
    ("background,-x", "is not a safe file name"),
    ("background," + "n" * 201, "at most 200"),
    # names the formats reserve become folders beside those files (docs/formats.md)
    ("background,classes.json", "class name 'classes.json' is a name nerveseg gives"),
    ("background,prediction.json", "(prediction.json)"),
    ("background,Prediction.JSON", "'Prediction.JSON' is, ignoring case, a name"),
    ("background,masks,vessel", "(masks)"),
    ("background,nerve,Nerve", "the names 'nerve' and 'Nerve' differ only by case"),
])
def test_bad_specs_are_refused(spec: str, fragment: str) -> None:
    with pytest.raises(NervesegError, match="--classes") as info:
        Classes.parse(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_tuple_is_checked_like_a_parsed_spec() -> None:
    with pytest.raises(NervesegError, match="given twice"):
        Classes(("background", "a", "a"))
    with pytest.raises(NervesegError, match="need 2 to 255"):
        Classes(("background",))
    with pytest.raises(NervesegError, match="need 2 to 255"):
        Classes(tuple(f"c{i}" for i in range(MAX_CLASSES + 1)))


@given(st.lists(SAFE_NAME.filter(lambda name: reserved_as(name) is None), min_size=2,
                max_size=8, unique_by=str.casefold))
@settings(max_examples=60, deadline=None)
def test_any_safe_distinct_names_parse_back(names: list[str]) -> None:
    spec = ",".join(names)
    if spec.isdigit():  # a single number is a count, not a name
        return
    assert Classes.parse(spec).names == tuple(names)


@given(st.sampled_from(sorted(RESERVED_NAMES)), st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_every_reserved_name_in_any_case_is_refused(name: str, random) -> None:
    """A reserved name is refused however it is capitalised (a case-insensitive file system
    holds one of them), from the command line and from a classes.json alike."""
    cased = "".join(c.upper() if random.random() < 0.5 else c for c in name)
    with pytest.raises(NervesegError, match=f"'{re.escape(cased)}' is"):
        Classes.parse(f"background,{cased}")
    with pytest.raises(NervesegError, match=r"^here: class name"):
        Classes.named(["background", cased], "here")


def test_classes_json_round_trip(tmp_path: Path) -> None:
    classes = Classes.parse("background,nerve,vessel")
    write_classes(tmp_path, classes)
    assert json.loads((tmp_path / CLASSES_JSON).read_text()) == {
        "classes": ["background", "nerve", "vessel"]}
    assert read_classes(tmp_path) == classes


def test_a_folder_without_classes_json_is_binary(tmp_path: Path) -> None:
    assert read_classes(tmp_path) is None


@pytest.mark.parametrize("text", [
    '{"classes": "background,nerve"}',
    '{"classes": ["background", 1]}',
    '{"names": ["background", "nerve"]}',
    '["background", "nerve"]',
])
def test_malformed_classes_json_names_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / CLASSES_JSON).write_text(text)
    with pytest.raises(NervesegError) as info:
        read_classes(tmp_path)
    assert CLASSES_JSON in str(info.value)


@pytest.mark.parametrize("names", [["background"], ["background", "a", "a"],
                                   ["background", "x/y"], ["background", "classes.json"],
                                   ["background", "A", "a"]])
def test_classes_json_with_bad_names_is_refused(tmp_path: Path, names: list[str]) -> None:
    (tmp_path / CLASSES_JSON).write_text(json.dumps({"classes": names}))
    with pytest.raises(NervesegError):
        read_classes(tmp_path)


def test_check_same_passes_on_equal_classes() -> None:
    Classes.parse("3").check_same(Classes.parse("background,class1,class2"), "a", "b")


@pytest.mark.parametrize("other", ["background,vessel,nerve", "background,nerve",
                                   "background,nerve,vessel,artery"])
def test_check_same_names_both_sources(other: str) -> None:
    mine = Classes.parse("background,nerve,vessel")
    with pytest.raises(NervesegError) as info:
        mine.check_same(Classes.parse(other), "probs/classes.json", "--classes")
    message = str(info.value)
    assert "probs/classes.json has classes background,nerve,vessel" in message
    assert f"--classes has {other}" in message
