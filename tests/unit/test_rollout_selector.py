"""The selector language (fleet.rollouts.selector): grammar, matching, canonical text, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import FleetError, SelectorError
from fleet.rollouts.selector import ALL, MAX_CLAUSES, MAX_LENGTH, Clause, Selector, parse_selector

LAB_PI4 = {"device": "pi-1", "site": "lab", "board": "pi4"}


@pytest.mark.parametrize("text", ["", "*", "  ", " * "])
def test_empty_and_star_select_every_device(text: str) -> None:
    selector = parse_selector(text)
    assert selector == ALL
    assert selector.is_all
    assert selector.matches({})
    assert str(selector) == "*"


@pytest.mark.parametrize(
    ("text", "tags", "expected"),
    [
        ("site=lab", LAB_PI4, True),
        ("site=home", LAB_PI4, False),
        ("site=lab,board=pi4", LAB_PI4, True),
        ("site=lab,board=pi5", LAB_PI4, False),
        ("board!=jetson", LAB_PI4, True),
        ("board!=pi4", LAB_PI4, False),
        ("board=pi4|pi5", LAB_PI4, True),
        ("board=pi5|jetson", LAB_PI4, False),
        ("board!=pi5|jetson", LAB_PI4, True),
        ("board!=pi4|jetson", LAB_PI4, False),
        # a device without the tag: key=v is false, key!=v is true
        ("rack=3", LAB_PI4, False),
        ("rack!=3", LAB_PI4, True),
        ("device=pi-1|pi-2", LAB_PI4, True),
        (" site=lab , board=pi4 ", LAB_PI4, True),
    ],
)
def test_matches(text: str, tags: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(tags) is expected


def test_canonical_text_sorts_clauses_and_alternatives_and_drops_duplicates() -> None:
    selector = parse_selector("site=lab, board=pi5|pi4|pi4 ,site=lab")
    assert str(selector) == "board=pi4|pi5,site=lab"
    assert parse_selector(str(selector)) == selector
    assert selector == parse_selector("board=pi4|pi5,site=lab")


def test_values_may_carry_the_usual_id_characters() -> None:
    text = "hardware=jetson-orin,owner=ops@example.org,path=a/b:c+d_e.f"
    assert str(parse_selector(text)) == text


@pytest.mark.parametrize(
    ("text", "clause", "why"),
    [
        ("site=lab,,board=pi4", "", "clause 2 '' is empty"),
        ("site=lab,", "", "clause 2 '' is empty"),
        ("site", "site", "clause 1 'site' is not key=value"),
        ("site=lab,board", "board", "clause 2 'board' is not key=value"),
        ("Site=lab", "Site=lab", "key 'Site'"),
        ("=lab", "=lab", "key ''"),
        ("site=", "site=", "value ''"),
        ("site=a||b", "site=a||b", "value ''"),
        ("site=la b", "site=la b", "value 'la b'"),
        ("site==lab", "site==lab", "value '=lab'"),
        ("site=lab*", "site=lab*", "value 'lab*'"),
        ("*,site=lab", "*", "clause 1 '*'"),
        ("a!b=c", "a!b=c", "not key=value"),
        ("k" + "x" * 64 + "=v", "k" + "x" * 64 + "=v", "does not match"),
        ("k=" + "v" * 129, "k=" + "v" * 129, "does not match"),
    ],
)
def test_errors_name_the_clause(text: str, clause: str, why: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert caught.value.text == text
    assert caught.value.clause == clause
    assert why in str(caught.value)
    assert repr(text) in str(caught.value)
    assert isinstance(caught.value, FleetError)


def test_bounds_on_length_and_clause_count() -> None:
    at_most = ",".join(f"k{i}=v" for i in range(MAX_CLAUSES))
    assert len(parse_selector(at_most).clauses) == MAX_CLAUSES
    with pytest.raises(SelectorError, match=f"33 clauses, at most {MAX_CLAUSES}"):
        parse_selector(at_most + ",k99=v")
    longest = "k=" + "|".join(["v" * 99] * 10) + "," + "j=" + "w" * (MAX_LENGTH - 1004)
    assert len(longest) == MAX_LENGTH
    parse_selector(longest)
    with pytest.raises(SelectorError, match=f"longer than {MAX_LENGTH}"):
        parse_selector(longest + "w")


_keys = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)
_values = st.from_regex(r"[A-Za-z0-9_.:/@+-]{1,8}", fullmatch=True)
_clauses = st.builds(
    Clause, _keys, st.booleans(), st.lists(_values, min_size=1, max_size=3).map(tuple)
)
_selectors = st.lists(_clauses, max_size=6).map(lambda cs: Selector(tuple(cs)))
_tags = st.dictionaries(_keys, _values, max_size=6)


@given(_selectors)
def test_parse_of_str_is_the_selector(selector: Selector) -> None:
    assert parse_selector(str(selector)) == selector
    assert str(parse_selector(str(selector))) == str(selector)


@given(_selectors, _tags)
def test_matching_is_every_clause_and_each_clause_is_its_definition(
    selector: Selector, tags: dict[str, str]
) -> None:
    expected = all(
        (tags.get(c.key) not in c.values) if c.negated else (tags.get(c.key) in c.values)
        for c in selector.clauses
    )
    assert selector.matches(tags) is expected
    assert parse_selector(str(selector)).matches(tags) is expected


@given(_selectors, _clauses, _tags)
def test_adding_a_clause_never_selects_more(
    selector: Selector, clause: Clause, tags: dict[str, str]
) -> None:
    narrower = Selector((*selector.clauses, clause))
    if narrower.matches(tags):
        assert selector.matches(tags)
