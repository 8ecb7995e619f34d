"""The one parser of list options (nerveseg_cli/lists.py) and the options read through it:
items are kept in order, and an empty item, an item of the wrong form, a repeat and a
contradiction are one-line errors naming the option and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.inference.bench import parse_batch_sizes
from nerveseg_cli.inference.ensemble import parse_weights
from nerveseg_cli.lists import first_repeat, parse_list, refuse_repeated_paths
from nerveseg_cli.train.checkpoints import SavePolicy
from nerveseg_cli.train.losses import make_loss

USAGE = "whole numbers, e.g. 1,2"


def ints(text: str, **options) -> list[int]:
    return parse_list(text, "--n", int, what="a whole number", usage=USAGE, **options)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=12, unique=True))
@settings(max_examples=80, deadline=None)
def test_distinct_items_come_back_in_order(values: list[int]) -> None:
    assert ints(",".join(map(str, values))) == values
    assert ints(" , ".join(map(str, values))) == values  # spaces around items are dropped


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.data())
@settings(max_examples=80, deadline=None)
def test_any_repeat_is_refused_naming_it(values: list[int], data: st.DataObject) -> None:
    again = data.draw(st.sampled_from(values))
    position = data.draw(st.integers(0, len(values)))
    spoilt = values[:position] + [again] + values[position:]
    text = ",".join(map(str, spoilt))
    with pytest.raises(NervesegError) as info:
        ints(text)
    repeat = first_repeat(spoilt)
    assert repeat is not None
    assert str(info.value) == f"--n {text!r}: {str(repeat[1])!r} is given twice; {USAGE}"


def test_repeats_may_be_allowed() -> None:
    assert ints("1,1,2", distinct=False) == [1, 1, 2]


@pytest.mark.parametrize(("text", "message"), [
    ("", "--n '': an empty item; " + USAGE),
    ("1,,2", "--n '1,,2': an empty item; " + USAGE),
    ("1,", "--n '1,': an empty item; " + USAGE),
    ("1, ,2", "--n '1, ,2': an empty item; " + USAGE),
    ("1,x", "--n '1,x': 'x' is not a whole number; " + USAGE),
    ("2,02", "--n '2,02': '02' is given twice (as '2'); " + USAGE),
])
def test_bad_lists_are_one_line_naming_option_and_value(text: str, message: str) -> None:
    with pytest.raises(NervesegError) as info:
        ints(text)
    assert str(info.value) == message


def test_items_of_one_kind_contradict() -> None:
    parity = {0: "even numbers", 1: "odd numbers"}
    assert ints("1,2", kind=lambda n: parity[n % 2]) == [1, 2]
    with pytest.raises(NervesegError, match=r"^--n '1,3': '1' and '3' are both odd numbers; "):
        ints("1,3", kind=lambda n: parity[n % 2])


def test_another_separator() -> None:
    assert parse_list("bce+dice", "--loss", str, what="a loss", sep="+", usage="u") == \
        ["bce", "dice"]


def test_first_repeat_compares_by_key() -> None:
    assert first_repeat(["a", "B", "b"], str.casefold) == ("B", "b")
    assert first_repeat([1, 2, 3]) is None
    assert first_repeat([1, 2, 1]) == (1, 1)


def test_save_every_refuses_two_epoch_counts_or_two_times() -> None:
    assert SavePolicy.parse("5,10m") == SavePolicy(5, 600.0)
    assert SavePolicy.parse("10m, 5") == SavePolicy(5, 600.0)
    for text, message in (("5,3", "'5' and '3' are both epoch counts"),
                          ("10m,1h", "'10m' and '1h' are both times"),
                          ("5,5", "'5' and '5' are both epoch counts"),
                          ("end,5", "'end' is not N epochs or a time")):
        with pytest.raises(NervesegError) as info:
            SavePolicy.parse(text)
        assert str(info.value).startswith(f"--save-every {text!r}: {message}; use N epochs"), \
            str(info.value)


def test_batch_sizes_must_differ() -> None:
    assert parse_batch_sizes("8,1,4") == (8, 1, 4)
    with pytest.raises(NervesegError, match=r"--batch-sizes '1,2,1': '1' is given twice"):
        parse_batch_sizes("1,2,1")


def test_ensemble_weights_may_repeat_but_not_be_empty() -> None:
    assert parse_weights("1,1", 2) == [1.0, 1.0]
    with pytest.raises(NervesegError, match=r"--weights '1,': an empty item"):
        parse_weights("1,", 2)


@pytest.mark.parametrize(("spec", "message"), [
    ("dice+dice", "--loss 'dice+dice': 'dice' is given twice"),
    ("bce+", "--loss 'bce+': an empty item"),
    ("+dice", "--loss '+dice': an empty item"),
])
def test_a_loss_names_each_term_once(spec: str, message: str) -> None:
    with pytest.raises(NervesegError, match=message.replace("+", r"\+")):
        make_loss(spec)


def test_the_same_path_twice_is_refused_also_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to(tmp_path / "a")
    refuse_repeated_paths([tmp_path / "a", tmp_path / "c"], "run")
    with pytest.raises(NervesegError, match=r"/b: run given twice \(as .*/a\); hint$"):
        refuse_repeated_paths([tmp_path / "a", tmp_path / "b"], "run", "hint")
