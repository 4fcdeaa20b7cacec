"""The incarnation-replacement rule: a later incarnation's steps replace the earlier ones from its first step."""

from __future__ import annotations

import pytest

from coordinator.core.incarnations import (
    is_replaced,
    latest_per_step,
    latest_points,
    repeated_steps,
    replaced_from,
    resolve,
    start_order,
    without_replaced,
)


def test_a_point_is_replaced_from_the_step_the_later_incarnation_resumed_at() -> None:
    assert not is_replaced(4, 5)
    assert is_replaced(5, 5)
    assert is_replaced(9, 5)
    assert not is_replaced(10**9, None)


def test_without_replaced_keeps_only_steps_before_the_resume_step_in_order() -> None:
    pts = [(3, 0.3), (7, 0.7), (1, 0.1), (5, 0.5)]
    assert without_replaced(pts, 5) == [(3, 0.3), (1, 0.1)]
    assert without_replaced(pts, None) == pts
    assert without_replaced(pts, 0) == []


def test_start_order_sorts_by_first_batch_time_and_keeps_ties_in_journal_order() -> None:
    assert start_order({7: 30.0, 2: 10.0, 5: 20.0}) == [2, 5, 7]
    assert start_order({9: 1.0, 3: 1.0}) == [9, 3]


def test_replaced_from_is_the_smallest_first_step_of_the_later_incarnations() -> None:
    lineage = [(1, 0), (2, 50), (3, 40), (4, None)]
    assert replaced_from(1, lineage) == 40
    assert replaced_from(2, lineage) == 40
    assert replaced_from(3, lineage) is None  # only an incarnation that logged nothing follows
    assert replaced_from(4, lineage) is None
    assert replaced_from(99, lineage) is None


def test_resolve_drops_what_each_later_incarnation_re_logged() -> None:
    first = [(s, 1.0) for s in range(10)]
    second = [(s, 2.0) for s in range(6, 12)]
    third = [(s, 3.0) for s in range(8, 9)]
    got = resolve([first, second, third])
    assert got == [(s, 1.0) for s in range(6)] + [(6, 2.0), (7, 2.0), (8, 3.0)]


def test_resolve_agrees_with_replaced_from_on_every_point() -> None:
    incs = {1: [(s, 1.0) for s in range(20)], 2: [(s, 2.0) for s in range(15, 30)], 3: [(s, 3.0) for s in range(5, 9)]}
    lineage = [(i, min(s for s, _ in pts)) for i, pts in incs.items()]
    kept = [p for i, pts in incs.items() for p in without_replaced(pts, replaced_from(i, lineage))]
    assert resolve(list(incs.values())) == kept


def test_resolve_keeps_the_later_value_of_a_repeated_step_and_ignores_empty_incarnations() -> None:
    assert resolve([[(1, 1.0), (1, 1.5)], [], [(2, 2.0)]]) == [(1, 1.5), (2, 2.0)]
    assert resolve([[(3, 1.0)]]) == [(3, 1.0)]
    assert resolve([]) == []


def test_a_repeated_step_within_an_incarnation_keeps_its_later_value_at_its_first_position() -> None:
    steps, values = latest_per_step([0, 1, 2, 1, 3, 1], [0.0, 1.0, 2.0, 1.5, 3.0, 1.75])
    assert steps == [0, 1, 2, 3]
    assert values == [0.0, 1.75, 2.0, 3.0]
    assert repeated_steps([0, 1, 2, 1, 3, 1]) == 2
    assert latest_per_step([4, 5], [0.4, 0.5]) == ([4, 5], [0.4, 0.5])
    assert repeated_steps([]) == 0
    assert latest_points([(1, 0.1, 10.0), (1, 0.2, 11.0)]) == [(1, 0.2, 11.0)]
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        latest_per_step([1, 2], [0.0])


def test_resolve_applies_the_repeat_rule_within_each_incarnation_and_only_lower_steps_rewind() -> None:
    first = [(0, 1.0), (1, 1.0), (1, 1.5), (2, 1.0)]
    second = [(3, 2.0), (4, 2.0)]  # continues at higher steps: nothing of the first is replaced
    assert resolve([first, second]) == [(0, 1.0), (1, 1.5), (2, 1.0), (3, 2.0), (4, 2.0)]
    third = [(2, 3.0), (2, 3.5)]  # an explicit lower step rewinds from there
    assert resolve([first, second, third]) == [(0, 1.0), (1, 1.5), (2, 3.5)]
