"""Blocks whose keys are not one group's (dicts that share a key, as the frameworks' ``epoch``): each group takes
its own keys' rows, a key that is logged elsewhere too leaves its group alone, and every result is the per-key
reducer's."""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from coordinator.aggregator import reduce as reduce_mod
from coordinator.aggregator.blocks import KeyGroup
from coordinator.aggregator.reduce import Reducer
from coordinator.core.policies import PolicyTable
from tests.aggregator.helpers import dump, round_end

_TRAIN = (*(f"train/m{j}" for j in range(6)), "epoch")
_VAL = ("val/loss", "epoch", "val/acc")
_WIDE = (*_TRAIN, "train/extra")


def _groups(red: Reducer) -> set[tuple[str, ...]]:
    return {g.keys for g in red.groups.values()}


def _both(
    new: Reducer, old: Reducer, keys: tuple[str, ...], rank: int, steps: list[int], vals: np.ndarray, now: float
) -> None:
    got = new.add_block(keys, rank, array("q", steps), vals.copy(), now)
    assert got == old.add_block(keys, rank, array("q", steps), vals.copy(), now)


@pytest.mark.parametrize("seed", range(24))
def test_dicts_that_share_keys_reduce_as_key_by_key(seed: int) -> None:
    """Seeded training loops: a training dict with ``epoch`` every step, now and then a validation dict with
    ``epoch`` (at that step or an earlier one), a wider dict, a few training keys as a dict of their own,
    ``epoch`` logged alone; a rank behind, repeats, a rank done. With key groups the reducer gives, emit
    after emit, what the per-key reducer gives, and the same counters."""
    rng = random.Random(seed)
    world = rng.choice([1, 2, 3, 4])
    table = PolicyTable({"epoch": rng.choice(["max", "rank0", "mean"]), "val/acc": "sum"}, "mean")
    new = Reducer(world, table, 5.0)
    old = Reducer(world, table, 5.0, blocks=False)
    subset = _TRAIN[:2]
    last = dict.fromkeys(range(world), -1)
    now = 0.0
    for _ in range(60):
        for r in range(world):
            if rng.random() < 0.1:
                continue  # behind this round
            start = last[r] + 1 if rng.random() > 0.03 else max(0, last[r] - 1)  # now and then a repeat
            n = rng.choice([1, 2, 3])
            last[r] = max(last[r], start + n - 1)
            steps = list(range(start, start + n))
            roll = rng.random()
            keys = _WIDE if roll < 0.05 else subset if roll < 0.08 else _TRAIN
            _both(new, old, keys, r, steps, np.array([[rng.uniform(-5, 5) for _ in steps] for _ in keys]), now)
            if rng.random() < 0.15:
                at = [max(0, steps[-1] - rng.randint(0, 2))]
                _both(new, old, _VAL, r, at, np.array([[rng.uniform(0, 1)] for _ in _VAL]), now)
            if rng.random() < 0.03:
                v = [rng.uniform(0, 9)]
                assert new.add_series("epoch", r, array("q", steps[-1:]), array("d", v), now) == old.add_series(
                    "epoch", r, array("q", steps[-1:]), array("d", v), now
                )
        now = round_end(rng, new, old, world, now, 0.03)
        assert (new.late_points, new.replaced_points) == (old.late_points, old.replaced_points)
    assert dump(new.emit(now, force=True)) == dump(old.emit(now, force=True))


def test_a_key_shared_with_another_dict_leaves_its_group_alone_and_the_rest_stays_one_group() -> None:
    """A validation dict with ``epoch`` at step 10, then the training dict without ``epoch`` (how a ring's
    pass hands over the dicts that share it), then the whole training dict again: ``epoch`` goes per key,
    the training keys stay one group (a split made each of them per key for the rest of the run), and the
    validation keys make a group of their own."""
    red = Reducer(2, PolicyTable({}, "mean"), 5.0)
    rest = _TRAIN[:-1]
    for r in range(2):
        red.add_block(_TRAIN, r, array("q", range(10)), np.ones((len(_TRAIN), 10)), 0.0)
    red.emit(1.0)
    for r in range(2):
        red.add_block(rest, r, array("q", [10]), np.ones((len(rest), 1)), 1.0)
        red.add_block(("epoch",), r, array("q", [10, 10]), np.ones((1, 2)), 1.0)
        red.add_block(_VAL[::2], r, array("q", [10]), np.ones((2, 1)), 1.0)
    assert _groups(red) == {rest, _VAL[::2]} and "epoch" in red.keys
    for r in range(2):
        red.add_block(_TRAIN, r, array("q", range(11, 20)), np.full((len(_TRAIN), 9), 2.0), 2.0)
    assert _groups(red) == {rest, _VAL[::2]}
    out = red.emit(3.0)
    assert list(out["train/m0"].steps) == list(range(10, 20)) and list(out["epoch"].steps) == list(range(10, 20))
    assert list(out["epoch"].values) == [1.0] + [2.0] * 9 and red.replaced_points == 2  # epoch twice at step 10


def test_a_few_keys_logged_as_a_dict_of_their_own_leave_the_group_and_the_rest_stays() -> None:
    """Two of seven grouped keys logged together at another step: the two leave (the smaller part), the
    five stay one group; a block of the seven then goes to the five and the two per key."""
    red = Reducer(1, PolicyTable({}, "mean"), 5.0)
    red.add_block(_TRAIN, 0, array("q", [0, 1]), np.zeros((7, 2)), 0.0)
    red.add_block(_TRAIN[:2], 0, array("q", [2]), np.ones((2, 1)), 0.0)
    assert _groups(red) == {_TRAIN[2:]} and set(_TRAIN[:2]) <= red.keys.keys()
    red.add_block(_TRAIN, 0, array("q", [3]), np.full((7, 1), 3.0), 0.0)
    assert _groups(red) == {_TRAIN[2:]}
    out = red.emit(1.0, force=True)
    assert list(out["train/m0"].steps) == [0, 1, 2, 3] and list(out["epoch"].steps) == [0, 1, 3]


def test_a_key_logged_alone_leaves_its_group_alone() -> None:
    """A grouped key's own chunk (a per-key point over the socket) takes that key out; the others stay."""
    red = Reducer(1, PolicyTable({}, "mean"), 5.0)
    red.add_block(_TRAIN, 0, array("q", [0]), np.zeros((7, 1)), 0.0)
    red.add_series("epoch", 0, array("q", [1]), array("d", [1.0]), 0.0)
    assert _groups(red) == {_TRAIN[:-1]}


def test_new_keys_beside_a_groups_keys_start_a_group_of_their_own() -> None:
    """A block of a group's keys and keys never seen: the group takes its rows, the new keys group together."""
    red = Reducer(1, PolicyTable({}, "mean"), 5.0)
    red.add_block(_TRAIN, 0, array("q", [0]), np.zeros((7, 1)), 0.0)
    red.add_block((*_TRAIN, "n1", "n2"), 0, array("q", [1]), np.ones((9, 1)), 0.0)
    assert _groups(red) == {_TRAIN, ("n1", "n2")}
    assert not red.keys


def test_shed_gives_the_keys_per_key_fields_and_keeps_the_rest() -> None:
    """Shedding keys gives exactly what a split gives for them; the group keeps the others' fields."""
    rng = np.random.default_rng(3)
    g = KeyGroup(("a", "b", "c", "d"), ("mean",) * 4, 3, 0.0)
    for s in range(0, 12, 3):
        for r in range(3):
            g.add(r, array("q", range(s, s + 3)), rng.normal(size=(4, 3)), float(s))
        if s == 6:
            g.emit(float(s), set(), frozenset(range(3)), 5.0, False)  # some steps emitted: recent values
    before = g.split()
    assert g.shed([1, 3]) == [before[1], before[3]]
    assert g.keys == ("a", "c") and g.split() == [before[0], before[2]]
    with pytest.raises(ValueError, match="some, not all"):
        g.shed([0, 1])
    with pytest.raises(ValueError, match="some, not all"):
        g.shed([])


def test_a_dict_that_went_per_key_after_a_repeat_is_one_group_again_once_regular() -> None:
    """A rank logs a step of the dict again (a replacement: the group goes per key); once that is emitted
    and every rank is past it, the next block makes the keys one group again, and every result is the
    per-key reducer's."""
    table = PolicyTable({}, "mean")
    new, old = Reducer(2, table, 5.0), Reducer(2, table, 5.0, blocks=False)
    rng = np.random.default_rng(1)
    rounds = [[(0, range(10)), (1, range(10))], [(0, range(9, 10))], [(0, range(10, 20)), (1, range(10, 20))]]
    for i, blocks in enumerate(rounds):
        for r, steps in blocks:
            _both(new, old, _TRAIN, r, list(steps), rng.normal(size=(len(_TRAIN), len(steps))), float(i))
        if i == 1:
            assert not new.groups and _TRAIN[0] in new.keys  # the repeat of step 9 sent the keys per key
        assert dump(new.emit(i + 0.5)) == dump(old.emit(i + 0.5))
    assert _groups(new) == {_TRAIN} and not new.keys
    assert dump(new.emit(99.0, force=True)) == dump(old.emit(99.0, force=True))
    assert new.replaced_points == old.replaced_points == len(_TRAIN)


def test_a_dict_that_keeps_turning_irregular_stays_per_key_after_a_bounded_number_of_regroups() -> None:
    """A repeat every round: the keys form their group again at most ``MAX_REGROUPS`` times, then stay per key."""
    red = Reducer(1, PolicyTable({}, "mean"), 5.0)
    formed = 0
    for lo in range(0, 400, 10):
        was = bool(red.groups)
        red.add_block(_TRAIN, 0, array("q", range(lo, lo + 10)), np.zeros((len(_TRAIN), 10)), 0.0)
        formed += not was and bool(red.groups)
        red.add_block(_TRAIN, 0, array("q", [lo + 9]), np.ones((len(_TRAIN), 1)), 0.0)  # a repeat
        red.emit(1.0)
    assert formed == reduce_mod.MAX_REGROUPS + 1  # the first group, then its regroups
    assert not red.groups
