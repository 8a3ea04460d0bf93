"""Stage plans (fleet.rollouts.plan): ``--stages`` parsing, targets and deterministic members."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import RolloutError
from fleet.rollouts.model import StageSize
from fleet.rollouts.plan import (
    check_stages,
    format_stages,
    parse_stages,
    rank,
    stage_members,
    stage_target,
)

DEVICES = [f"pi-{i}" for i in range(40)]
PLAN = parse_stages("1,10%,50%,100%")


def test_parse_counts_and_percents() -> None:
    assert parse_stages("1,10%,50%,100%") == (
        StageSize(count=1),
        StageSize(percent=10.0),
        StageSize(percent=50.0),
        StageSize(percent=100.0),
    )
    assert parse_stages(" 2 , 5 ,12.5%, 100% ") == (
        StageSize(count=2),
        StageSize(count=5),
        StageSize(percent=12.5),
        StageSize(percent=100.0),
    )
    assert parse_stages("100%") == (StageSize(percent=100.0),)
    assert format_stages(PLAN) == "1,10%,50%,100%"
    assert format_stages(parse_stages("2,12.5%,100%")) == "2,12.5%,100%"


@pytest.mark.parametrize(
    ("text", "entry", "why"),
    [
        ("0,100%", "0", "entry 1 '0' is neither"),
        ("1,0%,100%", "0%", "entry 2 '0%' is neither"),
        ("1,101%", "101%", "entry 2 '101%' is neither"),
        ("1,,100%", "", "entry 2 '' is neither"),
        ("1,x,100%", "x", "entry 2 'x' is neither"),
        ("1,-5,100%", "-5", "entry 2 '-5' is neither"),
        ("1,5%%,100%", "5%%", "entry 2 '5%%' is neither"),
        ("1,1000001,100%", "1000001", "entry 2 '1000001' is neither"),
        ("50%,10%,100%", "10%", "entry 2 '10%' does not grow past the share"),
        ("5,2,100%", "2", "entry 2 '2' does not grow past the count"),
        ("1,10%,10%,100%", "10%", "entry 3 '10%' does not grow"),
        ("1,10%,50%", "50%", "must end with 100%"),
        ("1,100%,5", "5", "must end with 100%"),
        ("5", "5", "must end with 100%"),
    ],
)
def test_bad_lists_are_refused_naming_the_entry(text: str, entry: str, why: str) -> None:
    with pytest.raises(RolloutError) as caught:
        parse_stages(text)
    assert caught.value.value == entry
    assert why in str(caught.value)


def test_bounds_on_the_list() -> None:
    with pytest.raises(RolloutError, match="at most 32"):
        parse_stages(",".join(str(i) for i in range(1, 33)) + ",100%")
    with pytest.raises(RolloutError, match="longer than 512"):
        parse_stages("1," * 300 + "100%")
    with pytest.raises(RolloutError, match="empty"):
        check_stages(())
    with pytest.raises(RolloutError, match="count or a share"):
        check_stages((StageSize(), StageSize(percent=100.0)))


@pytest.mark.parametrize(
    ("size", "n", "target"),
    [
        (StageSize(count=1), 6, 1),
        (StageSize(count=10), 6, 6),
        (StageSize(percent=50.0), 6, 3),
        (StageSize(percent=50.0), 7, 4),  # ceil
        (StageSize(percent=10.0), 6, 1),  # ceil of 0.6
        (StageSize(percent=0.1), 6, 1),  # at least 1
        (StageSize(percent=10.0), 30, 3),  # 10% of 30 is 3, not the float's 3.0000000000000004
        (StageSize(percent=100.0), 6, 6),
        (StageSize(percent=100.0), 0, 0),
        (StageSize(count=1), 0, 0),
    ],
)
def test_stage_target(size: StageSize, n: int, target: int) -> None:
    assert stage_target(size, n) == target


def test_rank_is_deterministic_and_depends_on_the_rollout() -> None:
    assert rank("r-00000001", DEVICES) == rank("r-00000001", list(reversed(DEVICES)))
    assert rank("r-00000001", DEVICES) != rank("r-00000002", DEVICES)
    assert sorted(rank("r-00000001", [*DEVICES, "pi-1"])) == sorted(DEVICES)


def _walk(rollout: str, eligible: list[str], stages: tuple[StageSize, ...]) -> list[set[str]]:
    members: set[str] = set()
    seen = []
    for index in range(len(stages)):
        new = stage_members(rollout, stages, index, eligible, members)
        assert not set(new) & members
        members |= set(new)
        seen.append(set(members))
    return seen


def test_each_stage_is_a_superset_of_the_one_before_and_ends_with_everyone() -> None:
    stages = _walk("r-0000abcd", DEVICES, PLAN)
    assert [len(s) for s in stages] == [1, 4, 20, 40]
    for before, after in itertools.pairwise(stages):
        assert before < after
    assert stages[-1] == set(DEVICES)
    assert stages[0] == {rank("r-0000abcd", DEVICES)[0]}


def test_members_stay_members_and_joiners_are_picked_up_by_the_next_stage() -> None:
    first = set(stage_members("r-0000abcd", PLAN, 0, DEVICES[:10], set()))
    # the canary left the selection; a newcomer joined it
    eligible = [d for d in DEVICES[:10] if d not in first] + ["newcomer"]
    last = stage_members("r-0000abcd", PLAN, 3, eligible, first)
    assert "newcomer" in last
    assert first.isdisjoint(last)
    assert len(first | set(last)) == 11


def test_a_stage_already_covered_adds_nobody() -> None:
    canary = set(stage_members("r-0000abcd", PLAN, 0, DEVICES[:6], set()))
    assert stage_members("r-0000abcd", PLAN, 1, DEVICES[:6], canary) == ()


_ids = st.lists(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), min_size=1, max_size=60)
_rollouts = st.from_regex(r"r-[0-9a-f]{8}", fullmatch=True)
_percents = st.floats(min_value=0.001, max_value=100.0)


@given(_rollouts, _ids, _percents, _percents)
def test_membership_is_monotone_in_the_share(
    rollout: str, devices: list[str], a: float, b: float
) -> None:
    small, large = sorted((a, b))
    plan = (StageSize(percent=small), StageSize(percent=large))
    fewer = set(stage_members(rollout, plan, 0, devices, set()))
    more = set(stage_members(rollout, plan, 1, devices, set()))
    assert fewer <= more
    assert len(more) == stage_target(StageSize(percent=large), len(set(devices)))


@given(_rollouts, _ids, st.permutations(range(60)))
def test_membership_is_deterministic_whatever_the_order(
    rollout: str, devices: list[str], order: list[int]
) -> None:
    shuffled = [devices[i] for i in order if i < len(devices)]
    assert _walk(rollout, devices, PLAN) == _walk(rollout, shuffled, PLAN)
    stages = _walk(rollout, devices, PLAN)
    assert all(a <= b for a, b in itertools.pairwise(stages))
    assert stages[-1] == set(devices)
