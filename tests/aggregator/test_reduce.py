"""Cross-rank reduction: policies, grouping, settling, timeouts, late points, and a model-based property."""

from __future__ import annotations

import itertools
import math
from array import array
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregator.reduce import Emitted, Reducer
from coordinator.core.policies import POLICIES, PolicyTable

T = 10.0  # group timeout used by the unit tests


def reducer(world: int, rules: dict[str, str] | None = None, default: str = "mean", timeout: float = T) -> Reducer:
    """A reducer for ``world`` ranks."""
    return Reducer(world, PolicyTable(rules, default), timeout)


def pts(e: Emitted | None) -> list[tuple[int, float, int]]:
    """(step, value, count) of an emission."""
    if e is None:
        return []
    return list(zip(e.steps, e.values, e.counts, strict=True))


def add(r: Reducer, key: str, rank: int, points: dict[int, float], now: float = 0.0) -> None:
    """Add one rank's points given as {step: value} (in step order)."""
    r.add(key, rank, list(points), list(points.values()), now)


# ----------------------------------------------------------------------------- PolicyTable


def test_policy_table_first_matching_glob_wins() -> None:
    """Rules are fnmatch globs tried in order; unmatched keys get the default."""
    p = PolicyTable({"train/*": "sum", "train/loss": "max", "*/acc?": "min", "lr": "rank0"})
    assert p("train/loss") == "sum"
    assert p("train/x/y") == "sum"
    assert p("val/acc1") == "min"
    assert p("val/acc") == "mean"
    assert p("lr") == "rank0"
    assert p("LR") == "mean"  # case-sensitive
    assert p("other") == "mean"


def test_policy_table_custom_default() -> None:
    """The default policy applies to every key no rule matches."""
    p = PolicyTable({"a": "sum"}, default="per_rank")
    assert (p("a"), p("b")) == ("sum", "per_rank")


@pytest.mark.parametrize(("rules", "default"), [({"a": "avg"}, "mean"), ({}, "median"), ({"x": ""}, "mean")])
def test_policy_table_rejects_unknown_policies(rules: dict[str, str], default: str) -> None:
    """An unknown policy in a rule or as the default is a ValueError naming it."""
    bad = next(iter(rules.values()), default)
    with pytest.raises(ValueError, match=repr(bad)):
        PolicyTable(rules, default)


def test_every_listed_policy_is_accepted() -> None:
    """All POLICIES are valid both as rules and as default."""
    for pol in POLICIES:
        assert PolicyTable({"k": pol}, pol)("k") == pol


# ----------------------------------------------------------------------------- reduction


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("mean", 1.0), ("all", 1.0), ("sum", 3.0), ("min", -2.0), ("max", 4.0), ("rank0", 1.0)],
)
def test_group_reduces_across_ranks_by_policy(policy: str, expected: float) -> None:
    """A complete group is reduced with the key's policy and carries its contributor count."""
    r = reducer(3, {"k": policy})
    add(r, "k", 2, {0: -2.0})
    add(r, "k", 1, {0: 4.0})
    assert r.emit(0.0) == {}
    add(r, "k", 0, {0: 1.0})
    out = r.emit(0.0)
    assert pts(out["k"]) == [(0, expected, 3)]
    assert r.pending_groups() == 0


def test_rank0_policy_uses_lowest_contributing_rank() -> None:
    """Without rank 0 in a group, rank0 takes the lowest rank that contributed."""
    r = reducer(3, {"k": "rank0"})
    add(r, "k", 2, {0: 20.0})
    add(r, "k", 1, {0: 10.0})
    r.rank_done(0)
    assert pts(r.emit(0.0)["k"]) == [(0, 10.0, 2)]


def test_mean_is_exactly_rounded() -> None:
    """mean uses an exact sum, so cancellation does not lose small values."""
    r = reducer(3)
    add(r, "k", 0, {0: 1e16})
    add(r, "k", 1, {0: 3.0})
    add(r, "k", 2, {0: -1e16})
    assert pts(r.emit(0.0)["k"]) == [(0, 1.0, 3)]


def test_single_rank_world_emits_immediately() -> None:
    """With world size 1 every point is its own complete group."""
    r = reducer(1)
    add(r, "k", 0, {0: 1.0, 1: 2.0, 5: 3.0})
    assert pts(r.emit(0.0)["k"]) == [(0, 1.0, 1), (1, 2.0, 1), (5, 3.0, 1)]


# ----------------------------------------------------------------------------- completeness


def test_group_waits_until_every_rank_reported_or_passed_the_step() -> None:
    """A step is emitted once every rank has logged it or moved past it (a skip counts as passed)."""
    r = reducer(2)
    add(r, "k", 0, {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})
    add(r, "k", 1, {0: 10.0, 1: 11.0})
    assert pts(r.emit(0.0)["k"]) == [(0, 5.0, 2), (1, 6.0, 2)]
    assert r.emit(0.0) == {}
    add(r, "k", 1, {2: 12.0})
    assert pts(r.emit(0.0)["k"]) == [(2, 7.0, 2)]
    add(r, "k", 1, {4: 14.0})  # rank 1 skipped step 3
    assert pts(r.emit(0.0)["k"]) == [(3, 3.0, 1), (4, 9.0, 2)]
    assert r.pending_groups() == 0 and r.late_points == 0


def test_keys_are_grouped_independently() -> None:
    """Progress on one key does not release groups of another."""
    r = reducer(2)
    add(r, "a", 0, {0: 1.0})
    add(r, "a", 1, {0: 3.0})
    add(r, "b", 0, {0: 5.0})
    out = r.emit(0.0)
    assert list(out) == ["a"] and pts(out["a"]) == [(0, 2.0, 2)]
    assert r.pending_groups() == 1


def test_unsettled_key_waits_for_ranks_that_never_logged_it_until_timeout() -> None:
    """A key only one rank has logged waits group_timeout_s (sweeps use all_keys) before a 1-rank value."""
    r = reducer(2)
    add(r, "k", 0, {0: 1.0, 1: 2.0}, now=100.0)
    assert r.emit(100.0) == {}
    assert r.emit(105.0, all_keys=True) == {}
    assert r.emit(100.0 + T - 0.001, all_keys=True) == {}
    assert r.emit(100.0 + T) == {}  # not touched since the last call and not a sweep
    assert pts(r.emit(100.0 + T, all_keys=True)["k"]) == [(0, 1.0, 1), (1, 2.0, 1)]
    # Now settled without rank 1: rank 0's new points are emitted at once.
    add(r, "k", 0, {2: 3.0}, now=111.0)
    assert pts(r.emit(111.0)["k"]) == [(2, 3.0, 1)]
    # Rank 1 turns up: its old steps are late, new steps wait for both ranks again.
    add(r, "k", 1, {0: 9.0, 2: 9.0, 3: 7.0}, now=112.0)
    assert r.late_points == 2
    assert r.emit(112.0) == {}
    add(r, "k", 0, {3: 1.0}, now=113.0)
    assert pts(r.emit(113.0)["k"]) == [(3, 4.0, 2)]


def test_unsettled_key_emits_once_all_ranks_logged_it() -> None:
    """When the last rank logs a key for the first time, waiting groups are emitted at once."""
    r = reducer(3)
    add(r, "k", 0, {0: 3.0, 1: 3.0})
    add(r, "k", 1, {0: 6.0, 1: 6.0})
    assert r.emit(1.0) == {}
    add(r, "k", 2, {1: 9.0}, now=2.0)  # rank 2 starts at step 1
    assert pts(r.emit(2.0)["k"]) == [(0, 4.5, 2), (1, 6.0, 3)]


def chunk(rank: int, ts: float, points: dict[int, float]) -> tuple[object, ...]:
    """A rank chunk as ``restore_view`` gives it: (rank, incarnation, ts, step_min, step_max, step_last, steps,
    values)."""
    return (rank, 1, ts, min(points), max(points), max(points), array("q", points), array("d", points.values()))


def test_a_restored_key_some_rank_never_logged_waits_for_it_a_timeout_from_its_first_chunk() -> None:
    """After a restart a key only some ranks logged is unsettled, as before the crash: it waits for
    the others until the group timeout counted from its first chunk, never a mean over the early ranks."""
    r = reducer(3)
    r.restore("k", -1, [chunk(0, 100.0, {0: 3.0, 1: 3.0}), chunk(1, 101.0, {0: 6.0})], 105.0)
    assert r.emit(105.0, all_keys=True) == {}
    assert r.emit(100.0 + T - 0.001, all_keys=True) == {}
    assert pts(r.emit(100.0 + T, all_keys=True)["k"]) == [(0, 4.5, 2)]  # step 1 still waits for rank 1

    r = reducer(3)
    r.restore("k", -1, [chunk(0, 100.0, {0: 3.0, 1: 3.0}), chunk(1, 101.0, {0: 6.0})], 105.0)
    add(r, "k", 2, {0: 9.0, 1: 9.0}, now=106.0)  # the slow rank arrives: complete groups go at once
    add(r, "k", 1, {1: 6.0}, now=106.0)
    assert pts(r.emit(106.0)["k"]) == [(0, 6.0, 3), (1, 6.0, 3)] and r.late_points == 0


def test_a_restored_key_every_rank_logged_is_settled_and_emits_complete_groups_at_once() -> None:
    r = reducer(2)
    r.restore("k", 0, [chunk(0, 100.0, {0: 1.0, 1: 3.0}), chunk(1, 100.0, {0: 1.0, 1: 5.0, 2: 7.0})], 101.0)
    assert pts(r.emit(101.0)["k"]) == [(1, 4.0, 2)]


def test_settled_group_times_out_waiting_for_a_stalled_rank() -> None:
    """A group waiting for a live but silent rank is emitted group_timeout_s after it was created."""
    r = reducer(2)
    add(r, "k", 0, {0: 1.0})
    add(r, "k", 1, {0: 3.0})
    assert pts(r.emit(0.0)["k"]) == [(0, 2.0, 2)]
    add(r, "k", 0, {1: 5.0}, now=1.0)
    add(r, "k", 0, {2: 6.0}, now=4.0)
    assert r.emit(1.0 + T - 0.5, all_keys=True) == {}
    assert pts(r.emit(1.0 + T, all_keys=True)["k"]) == [(1, 5.0, 1)]
    assert pts(r.emit(4.0 + T, all_keys=True)["k"]) == [(2, 6.0, 1)]
    add(r, "k", 1, {1: 0.0, 2: 0.0}, now=20.0)
    assert r.late_points == 2
    assert r.pending_groups() == 0


def test_rank_done_releases_waiting_groups() -> None:
    """A closed or lost rank is no longer waited for, for settled and unsettled keys alike."""
    r = reducer(3)
    for rank in range(3):
        add(r, "s", rank, {0: float(rank)})
    add(r, "s", 0, {1: 1.0, 2: 2.0})
    add(r, "s", 1, {1: 3.0, 2: 4.0})
    add(r, "u", 0, {0: 10.0})
    add(r, "u", 1, {0: 20.0})
    assert pts(r.emit(0.0)["s"]) == [(0, 1.0, 3)]
    assert r.emit(0.0) == {}
    r.rank_done(2)
    out = r.emit(0.0)
    assert pts(out["s"]) == [(1, 2.0, 2), (2, 3.0, 2)]
    assert pts(out["u"]) == [(0, 15.0, 2)]


def test_all_ranks_done_emits_everything() -> None:
    """When every rank that logs a key is done, nothing of it is held back."""
    r = reducer(2)
    add(r, "k", 0, {0: 1.0, 5: 2.0})
    add(r, "k", 1, {0: 3.0})
    r.rank_done(0)
    r.rank_done(1)
    assert pts(r.emit(0.0)["k"]) == [(0, 2.0, 2), (5, 2.0, 1)]


def test_force_emits_everything_pending() -> None:
    """emit(force=True) releases unsettled and incomplete groups in step order."""
    r = reducer(4)
    add(r, "k", 1, {3: 1.0, 7: 2.0})
    add(r, "k", 2, {3: 3.0})
    assert r.emit(0.0) == {}
    assert pts(r.emit(0.0, force=True)["k"]) == [(3, 2.0, 2), (7, 2.0, 1)]
    assert r.pending_groups() == 0


def test_late_points_are_counted_not_emitted() -> None:
    """Points at or below the last emitted step are counted as late and never re-emitted."""
    r = reducer(2)
    add(r, "k", 0, {0: 1.0, 5: 1.0})
    r.emit(0.0, force=True)
    add(r, "k", 1, {0: 9.0, 3: 9.0, 5: 9.0, 6: 2.0})
    assert r.late_points == 3
    out = r.emit(0.0, force=True)
    assert pts(out["k"]) == [(6, 2.0, 1)]


def test_replaced_points_are_counted_and_last_write_wins() -> None:
    """A rank re-sending a pending step replaces its value and is counted."""
    r = reducer(2)
    add(r, "k", 0, {0: 1.0})
    add(r, "k", 0, {0: 5.0})
    add(r, "k", 1, {0: 3.0})
    assert r.replaced_points == 1
    assert pts(r.emit(0.0)["k"]) == [(0, 4.0, 2)]


@pytest.mark.parametrize("per_emit", [1, 3, 1000])
def test_repeats_reach_back_exactly_256_entries_however_many_groups_one_emit_holds(per_emit: int) -> None:
    """Small emits trim the recent groups one by one, large ones copy the newest: the same 64 groups of 4 stay."""
    r = reducer(4)
    for lo in range(0, 1000, per_emit):
        for rank in range(4):
            add(r, "k", rank, {s: float(rank) for s in range(lo, min(lo + per_emit, 1000))})
        r.emit(0.0)
    assert r.late_points == 0
    add(r, "k", 2, {936: 10.0})  # the 64th newest group: kept, re-emitted with the new mean
    add(r, "k", 2, {935: 10.0})  # the 65th: dropped from the window, so late
    assert (r.replaced_points, r.late_points) == (1, 1)
    e = r.emit(0.0)["k"]
    assert pts(e) == [(936, (0.0 + 1.0 + 10.0 + 3.0) / 4, 4)] and e.reemitted == 1


def test_per_rank_policy_emits_nothing() -> None:
    """per_rank keys have no main series: nothing pending, nothing emitted, even when forced."""
    r = reducer(2, {"pr/*": "per_rank"})
    add(r, "pr/x", 0, {0: 1.0, 1: 2.0})
    add(r, "pr/x", 1, {0: 1.0, 1: 2.0})
    assert r.pending_groups() == 0
    assert r.emit(0.0) == {} and r.emit(1e9, force=True) == {}
    assert r.late_points == 0


def test_emission_is_in_increasing_step_order_and_never_goes_back() -> None:
    """Across emits, including a forced one, each key's steps strictly increase."""
    r = reducer(3)
    seen: list[int] = []
    add(r, "k", 0, {5: 1.0, 2: 1.0, 9: 1.0})  # out of order within a call
    add(r, "k", 1, {1: 1.0, 9: 1.0})
    seen += [s for s, _, _ in pts(r.emit(0.0).get("k"))]
    seen += [s for s, _, _ in pts(r.emit(0.0, force=True).get("k"))]
    add(r, "k", 2, {0: 1.0, 4: 1.0, 10: 1.0})
    add(r, "k", 0, {11: 1.0})
    add(r, "k", 1, {12: 1.0})
    seen += [s for s, _, _ in pts(r.emit(1.0).get("k"))]
    seen += [s for s, _, _ in pts(r.emit(2.0, force=True).get("k"))]
    assert seen == sorted(set(seen))
    assert seen == [1, 2, 5, 9, 10, 11, 12]
    assert r.late_points == 2


# ----------------------------------------------------------------------------- property test


def _reference(policy: str, group: dict[int, float]) -> float:
    """The reduction written out the obvious way."""
    vals = list(group.values())
    if policy in ("mean", "all"):
        return math.fsum(vals) / len(vals)
    if policy == "sum":
        return math.fsum(vals)
    if policy == "min":
        return min(vals)
    if policy == "max":
        return max(vals)
    assert policy == "rank0"
    return group[min(group)]


@dataclass
class _Scenario:
    world: int
    policies: dict[str, str]
    streams: dict[tuple[int, str], list[tuple[int, float]]]
    """(rank, key) -> that rank's (step, value) points for the key, steps strictly increasing."""
    ops: list[tuple[str, object]] = field(default_factory=list)
    """("add", (rank, key, points)) | ("emit", all_keys) | ("done", rank) | ("tick", dt)."""


_KEYS = ["a", "b/c", "d"]


@st.composite
def _scenarios(draw: st.DrawFn, *, timeouts: bool) -> _Scenario:
    world = draw(st.integers(1, 4))
    pol_choices = ["mean", "sum", "min", "max", "rank0", "all"] + (["per_rank"] if timeouts else [])
    policies = {k: draw(st.sampled_from(pol_choices)) for k in _KEYS}
    value = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: v + 0.0)
    streams: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for rank in range(world):
        for key in _KEYS:
            steps = sorted(draw(st.sets(st.integers(0, 12), max_size=8)))
            if steps:
                streams[(rank, key)] = [(s, draw(value)) for s in steps]
    # Cut each stream into batches, then interleave batches keeping each stream's order.
    batches: dict[tuple[int, str], list[list[tuple[int, float]]]] = {}
    for sk, points in streams.items():
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(points) - 1)), max_size=len(points) - 1)))
        bounds = [0, *cuts, len(points)]
        batches[sk] = [points[a:b] for a, b in itertools.pairwise(bounds) if points[a:b]]
    order = [sk for sk, bs in batches.items() for _ in bs]
    order = draw(st.permutations(order)) if order else []
    remaining = {sk: len(bs) for sk, bs in batches.items()}
    rank_left = {r: sum(n for (rr, _), n in remaining.items() if rr == r) for r in range(world)}
    sc = _Scenario(world, policies, streams)
    idx = dict.fromkeys(batches, 0)
    for sk in order:
        sc.ops.append(("add", (sk[0], sk[1], batches[sk][idx[sk]])))
        idx[sk] += 1
        rank_left[sk[0]] -= 1
        if timeouts:
            if draw(st.booleans()):
                sc.ops.append(("tick", draw(st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.6]))))
            if draw(st.integers(0, 9)) == 0:
                sc.ops.append(("done", draw(st.integers(0, world - 1))))  # even while still logging
        elif rank_left[sk[0]] == 0 and draw(st.booleans()):
            sc.ops.append(("done", sk[0]))  # a rank closes only after sending everything
        if draw(st.booleans()):
            sc.ops.append(("emit", draw(st.booleans())))
    return sc


def _run(sc: _Scenario, timeout: float) -> tuple[Reducer, dict[str, list[tuple[int, float, int]]], int, int]:
    """Drive the reducer through the scenario while a model predicts late points and group values.

    Returns the reducer, every emission per key, the model's late count and the total points added.
    """
    r = Reducer(sc.world, PolicyTable(sc.policies), timeout)
    now = 1000.0
    emitted: dict[str, list[tuple[int, float, int]]] = {k: [] for k in _KEYS}
    upto = dict.fromkeys(_KEYS, -1)  # model of the last emitted step per key, from observed emissions
    groups: dict[tuple[str, int], dict[int, float]] = {}
    late = total = 0

    def take(out: dict[str, Emitted]) -> None:
        for key, e in out.items():
            assert sc.policies[key] != "per_rank"
            assert len(e.steps) == len(e.values) == len(e.counts) > 0
            for s, v, c in zip(e.steps, e.values, e.counts, strict=True):
                assert s > upto[key], f"{key}: step {s} emitted after {upto[key]}"
                g = groups.pop((key, s))
                assert c == len(g)
                assert v == _reference(sc.policies[key], g), (key, s, g, v)
                upto[key] = s
                emitted[key].append((s, v, c))

    for op, arg in sc.ops:
        if op == "add":
            assert isinstance(arg, tuple)
            rank, key, points = arg
            r.add(key, rank, [s for s, _ in points], [v for _, v in points], now)
            if sc.policies[key] == "per_rank":
                continue
            for s, v in points:
                total += 1
                if s <= upto[key]:
                    late += 1
                else:
                    groups.setdefault((key, s), {})[rank] = v
        elif op == "emit":
            take(r.emit(now, all_keys=bool(arg)))
        elif op == "done":
            assert isinstance(arg, int)
            r.rank_done(arg)
        else:
            assert isinstance(arg, float)
            now += arg
    take(r.emit(now, force=True))
    assert not groups, f"never emitted: {sorted(groups)}"
    assert r.pending_groups() == 0
    return r, emitted, late, total


@settings(max_examples=300, deadline=None)
@given(_scenarios(timeouts=False))
def test_reducer_matches_reference_without_timeouts(sc: _Scenario) -> None:
    """Without timeouts no point is late: every logged (key, step) is emitted once with the full reduction."""
    r, emitted, late, _total = _run(sc, timeout=1e9)
    assert late == 0 and r.late_points == 0
    for key in _KEYS:
        logged: dict[int, dict[int, float]] = {}
        for (rank, k), points in sc.streams.items():
            if k == key:
                for s, v in points:
                    logged.setdefault(s, {})[rank] = v
        want = [(s, _reference(sc.policies[key], g), len(g)) for s, g in sorted(logged.items())]
        assert emitted[key] == want


@settings(max_examples=300, deadline=None)
@given(_scenarios(timeouts=True))
def test_reducer_accounts_for_every_point_with_timeouts(sc: _Scenario) -> None:
    """With timeouts and early rank_done, each point is in exactly one emitted group or counted late."""
    r, emitted, late, total = _run(sc, timeout=1.0)
    assert r.late_points == late
    assert sum(c for e in emitted.values() for _, _, c in e) + r.late_points == total
    for key, e in emitted.items():
        steps = [s for s, _, _ in e]
        assert steps == sorted(set(steps))
        logged = {s for (_, k), points in sc.streams.items() if k == key for s, _ in points}
        assert set(steps) <= logged
