"""Key groups: exact sums, and a differential test of the block path against the per-key reducer."""

from __future__ import annotations

import math
import random
import struct
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.blocks import KeyGroup, _union
from coordinator.aggregator.reduce import Emitted, Reducer
from coordinator.aggregator.sums import _certified, _half_gap, exact_sums
from coordinator.core.policies import PolicyTable
from tests.aggregator.helpers import batch, bye, hello, make_cfg, reopen


def _value(rng: random.Random) -> float:
    kind = rng.random()
    if kind < 0.25:
        return float(rng.randint(-3, 3))
    if kind < 0.5:
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300)
    if kind < 0.6:
        return rng.choice([0.0, -0.0, 0.5, 1e307, -1e307, 2.0**-1074, 1.0 + 2.0**-52, 2.0**53])
    if kind < 0.62:
        return math.nan
    return rng.gauss(0, 1)


def test_exact_sums_equal_fsum_bit_for_bit() -> None:
    """Every element, present entries only, is what math.fsum gives (ties, zeros, NaN, overflow included)."""
    rng = random.Random(7)
    # Odd counts and large ones too: the sums are taken pairwise, halving the ranks at each level.
    for ranks, steps in ((1, 200), (2, 200), (3, 200), (4, 200), (5, 200), (8, 200), (17, 100), (64, 50), (1025, 8)):
        v = np.array([[[_value(rng) for _ in range(ranks)] for _ in range(steps)] for _ in range(5)])
        mask = np.array([[rng.random() < 0.8 for _ in range(ranks)] for _ in range(steps)])
        v[:, ~mask] = 0.0
        got = exact_sums(v.copy(), mask)
        for i in range(5):
            for j in range(steps):
                want = math.fsum(v[i, j][mask[j]].tolist())
                assert struct.pack("<d", got[i, j]) == struct.pack("<d", want) or (
                    math.isnan(want) and math.isnan(got[i, j])
                ), (v[i, j], mask[j], got[i, j], want)


def test_exact_sums_certify_many_ranks_without_fallback() -> None:
    """Ordinary values over 1024 ranks: fsum's result, and the certificate (not the fallback) gives most of them."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(3, 40, 1024)) * 10.0 ** rng.integers(-8, 8, size=(3, 40, 1024))
    mask = np.ones((40, 1024), dtype=bool)
    with np.errstate(all="ignore"):
        certified = _certified(v)
    assert np.isfinite(certified).mean() > 0.9
    got = exact_sums(v, mask)
    for i in range(3):
        for j in range(40):
            assert got[i, j] == math.fsum(v[i, j].tolist())


@pytest.mark.parametrize("sparse", [False, True])
def test_union_gives_each_step_the_age_of_its_first_run(sparse: bool) -> None:
    """Distinct steps sorted, each point's place among them, each step's age from the first run holding it
    (ages not in arrival order too), against the plain computation."""
    rng = random.Random(11 + sparse)
    for _ in range(50):
        runs, created = [], []
        for _ in range(rng.randint(1, 40)):
            start = rng.randint(0, 5000 if sparse else 60)
            gap = 97 if sparse else 1
            runs.append(np.arange(start, start + gap * rng.randint(1, 12), gap, dtype=np.int64))
            created.append(rng.uniform(0, 10))
        steps = np.concatenate(runs)
        uniq, where, ages = _union(runs, created, steps)
        want = sorted(set(steps.tolist()))
        assert uniq.tolist() == want
        assert [want[i] for i in where.tolist()] == steps.tolist()
        first = {}
        for r, c in zip(runs, created, strict=True):
            for x in r.tolist():
                first.setdefault(x, c)
        assert ages.tolist() == [first[x] for x in want]


def test_exact_sums_near_ties() -> None:
    """Sums whose float rounding is a near-tie are still correctly rounded."""
    one = 1.0
    ulp = 2.0**-52
    rows = [[one, ulp / 2, ulp / 2**60], [one, ulp / 2, -(ulp / 2**60)], [one, -ulp / 4, -ulp / 4, ulp / 2**70]]
    for r in rows:
        v = np.array([[r]])
        assert exact_sums(v, np.ones((1, len(r)), dtype=bool))[0, 0] == math.fsum(r)


def _dump(out: dict[str, Emitted]) -> dict[str, tuple[bytes, bytes, bytes, int]]:
    return {k: (e.steps.tobytes(), e.values.tobytes(), e.counts.tobytes(), e.reemitted) for k, e in out.items()}


def _steps(rng: random.Random, last: int, emitted: int, odd: float = 0.25) -> list[int]:
    n = rng.choice([1, 1, 2, 3, 5])
    kind = rng.random() * odd / 0.25
    if kind < 0.75 or kind < 1.0 - odd:
        start = last + 1 + (rng.randint(1, 3) if rng.random() < 0.1 else 0)
        return list(range(start, start + n))
    if kind < 0.85:  # repeats of recent steps
        start = max(0, last - rng.randint(0, 4))
        return list(range(start, start + n))
    if kind < 0.93:  # late
        return [rng.randint(0, max(0, emitted))]
    return rng.sample(range(max(0, last - 3), last + 6), k=min(n, 5))  # not increasing


def _run(seed: int, stride: int = 1) -> None:
    """One seeded sequence; ``stride`` spaces the steps out (1000: too sparse for a bitmap, sorted)."""
    rng = random.Random(seed)
    world = rng.choice([1, 2, 3, 4])
    policies = {"c": rng.choice(["mean", "sum", "rank0", "min", "all"]), "e": rng.choice(["max", "mean"])}
    table = PolicyTable(policies, rng.choice(["mean", "mean", "sum", "rank0"]))
    timeout = rng.choice([3.0, 50.0])
    new = Reducer(world, table, timeout)
    old = Reducer(world, table, timeout, blocks=False)
    group = ("a", "b", "c", "d")
    others = [("a", "b", "c"), ("b", "a", "c", "d"), ("d", "e")]
    last = dict.fromkeys(range(world), -1)
    odd = rng.choice([0.0, 0.01, 0.25])  # how often a block is irregular: some runs keep their group long
    now = 0.0
    for _ in range(rng.randint(20, 120)):
        op = rng.random()
        if op < 0.6:
            rank = rng.randrange(world + (1 if rng.random() < 0.02 else 0))
            keys = group if rng.random() >= odd / 3 else rng.choice(others)
            steps = _steps(rng, last.get(rank, -1), max(0, min(last.values())), odd)
            last[rank] = max(last.get(rank, -1), *steps)
            steps = [s * stride for s in steps]
            vals = np.array([[_value(rng) for _ in steps] for _ in keys])
            sa = array("q", steps)
            got = new.add_block(keys, rank, sa, vals.copy(), now)
            want = old.add_block(keys, rank, array("q", steps), vals.copy(), now)
            assert got == want
        elif op < 0.6 + odd / 5:
            rank = rng.randrange(world)
            key = rng.choice("abcde")
            steps = [s * stride for s in _steps(rng, last[rank], 0)]
            vals = [_value(rng) for _ in steps]
            assert new.add(key, rank, steps, vals, now) == old.add(key, rank, steps, vals, now)
        else:
            now = _shared_op(rng, op, new, old, world, last[0], now, "abcd")
        _same_state(new, old, world, "abcde")
    assert _dump(new.emit(now, force=True)) == _dump(old.emit(now, force=True))


def _shared_op(
    rng: random.Random, op: float, new: Reducer, old: Reducer, world: int, last: int, now: float, keys: str
) -> float:
    """One of the operations both random sequences make (``op`` past their own adds): a rank done or back, a
    rewind, or time passing and an emit compared; returns the new time."""
    if op < 0.7:
        rank = rng.randrange(world)
        new.rank_done(rank)
        old.rank_done(rank)
    elif op < 0.74:
        rank = rng.randrange(world)
        new.rank_back(rank)
        old.rank_back(rank)
    elif op < 0.77:
        key, rank, step = rng.choice(keys), rng.randrange(world), rng.randint(0, max(0, last))
        new.rewind(key, rank, step)
        old.rewind(key, rank, step)
    else:
        now += rng.choice([0.0, 0.5, 1.0, 4.0])
        force = rng.random() < 0.05
        all_keys = rng.random() < 0.3
        assert _dump(new.emit(now, force=force, all_keys=all_keys)) == _dump(
            old.emit(now, force=force, all_keys=all_keys)
        )
    return now


def _same_state(new: Reducer, old: Reducer, world: int, keys: str) -> None:
    """The counters, pending groups and each rank's last step agree."""
    assert (new.late_points, new.replaced_points) == (old.late_points, old.replaced_points)
    assert new.pending_groups() == old.pending_groups()
    for k in keys:
        for r in range(world):
            assert new.maxstep(k, r) == old.maxstep(k, r)


@pytest.mark.parametrize("stride", [1, 1000])
@pytest.mark.parametrize("chunk", range(12))  # seed 674 found a split touching keys the per-key path does not
def test_block_path_equals_per_key_path(chunk: int, stride: int) -> None:
    """Seeded random sequences of blocks, single keys, repeats, late and unordered steps, rank
    done/back, rewinds, timeouts and forced emits give the same emitted (step, value, count) per
    key, repeats and late/replaced counters with key groups as key by key."""
    for seed in range(chunk * 60, chunk * 60 + 60):
        _run(seed, stride)


def _run_series(seed: int) -> None:
    rng = random.Random(seed)
    world = rng.choice([1, 2, 3, 4])
    table = PolicyTable({"y": rng.choice(["mean", "sum", "rank0", "max", "all"])}, rng.choice(["mean", "sum"]))
    timeout = rng.choice([3.0, 50.0])
    new = Reducer(world, table, timeout)
    new.series_group_from = rng.choice([1, 2, 4, 64])
    old = Reducer(world, table, timeout, blocks=False)
    last = dict.fromkeys(range(world), -1)
    odd = rng.choice([0.0, 0.02, 0.25])
    now = 0.0
    for _ in range(rng.randint(20, 120)):
        op = rng.random()
        if op < 0.65:
            rank = rng.randrange(world)
            key = rng.choice("xyz")
            if rng.random() < 0.2:  # a rank logging flat out: a long chunk
                steps = list(range(last[rank] + 1, last[rank] + 1 + rng.randint(50, 200)))
            else:
                steps = _steps(rng, last[rank], max(0, min(last.values())), odd)
            last[rank] = max(last[rank], *steps)
            vals = [_value(rng) for _ in steps]
            got = new.add_series(key, rank, array("q", steps), array("d", vals), now)
            assert got == old.add(key, rank, steps, vals, now)
        else:
            now = _shared_op(rng, op, new, old, world, last[0], now, "xyz")
        _same_state(new, old, world, "xyz")
    assert _dump(new.emit(now, force=True)) == _dump(old.emit(now, force=True))


@pytest.mark.parametrize("chunk", range(5))
def test_a_key_logged_alone_as_a_group_of_one_equals_the_per_key_path(chunk: int) -> None:
    """Seeded random sequences of single-key chunks, long (a rank logging flat out) and short,
    with repeats, late and unordered steps, rank done/back, rewinds and emits: the same emitted
    points and counters whether a key first seen in a long chunk is reduced as a group of one
    (``add_series``) or key by key."""
    for seed in range(chunk * 60, chunk * 60 + 60):
        _run_series(seed)


def test_a_key_first_seen_in_a_long_chunk_is_a_group_of_one_and_a_short_one_is_not() -> None:
    red = Reducer(2, PolicyTable({}, "mean"), 60.0)
    red.add_series("fast", 0, array("q", range(100)), array("d", [1.0] * 100), 0.0)
    red.add_series("paced", 0, array("q", range(3)), array("d", [1.0] * 3), 0.0)
    assert set(red.groups) == {"fast"} and set(red.keys) == {"paced"}


@pytest.mark.parametrize("back", [0, 5, 84, 85, 86, 255, 256, 300])
@pytest.mark.parametrize("length", [1, 7, 400])
@pytest.mark.parametrize("world", [1, 3])
def test_long_blocks_and_a_repeat_near_the_recent_bound_equal_the_per_key_path(
    back: int, length: int, world: int
) -> None:
    """Blocks of many steps (a rank logging flat out), emitted in parts and past the bound of
    recent entries kept for repeats (256: 85 steps of 3 ranks), then one repeat ``back`` steps
    before the last: the same emitted points, repeat and late counts with key groups as key by key."""
    table = PolicyTable({"c": "rank0", "d": "sum"}, "mean")
    new = Reducer(world, table, 60.0)
    old = Reducer(world, table, 60.0, blocks=False)
    keys = ("a", "b", "c", "d")
    rng = random.Random(back * 1000 + length * 10 + world)
    now = 0.0
    nxt = dict.fromkeys(range(world), 0)
    while min(nxt.values()) < 400:
        for r in range(world):
            # Ranks cut their batches at different steps: a block covers part of what another
            # rank sent, and more.
            n = length + (rng.randint(0, 3) if r else 0)
            steps = array("q", range(nxt[r], nxt[r] + n))
            nxt[r] += n
            vals = np.array([[_value(rng) for _ in steps] for _ in keys])
            assert new.add_block(keys, r, steps, vals.copy(), now) == old.add_block(
                keys, r, array("q", steps), vals.copy(), now
            )
            now += 0.01
            assert _dump(new.emit(now)) == _dump(old.emit(now))
    assert new.groups, "the regular blocks were reduced as a group"
    assert _dump(new.emit(now, all_keys=True)) == _dump(old.emit(now, all_keys=True))
    s = min(nxt.values()) - 1 - back  # emitted: every rank logged past it
    vals = np.array([[_value(rng)] for _ in keys])
    assert new.add_block(keys, 0, array("q", [s]), vals.copy(), now) == old.add_block(
        keys, 0, array("q", [s]), vals.copy(), now
    )
    assert (new.late_points, new.replaced_points) == (old.late_points, old.replaced_points)
    assert _dump(new.emit(now)) == _dump(old.emit(now))
    assert new.pending_groups() == old.pending_groups()
    assert _dump(new.emit(now, force=True)) == _dump(old.emit(now, force=True))


def _run_aligned(seed: int) -> None:
    """Ranks in step: every rank sends the same run of consecutive steps, in a random order, with
    emits between their sends, a rank now and then skipping a run, and the shared operations."""
    rng = random.Random(seed)
    world = rng.choice([2, 3, 4, 8])
    table = PolicyTable({"a": rng.choice(["mean", "sum", "rank0", "max", "all"])}, rng.choice(["mean", "sum", "rank0"]))
    timeout = rng.choice([3.0, 50.0])
    new = Reducer(world, table, timeout)
    new.series_group_from = 1
    old = Reducer(world, table, timeout, blocks=False)
    keys = ("a", "b", "c") if rng.random() < 0.5 else ("y",)  # a dict, or a key logged alone
    nxt = 0
    now = 0.0
    for _ in range(rng.randint(10, 40)):
        steps = list(range(nxt, nxt + rng.choice([1, 2, 3, 40, 300])))
        nxt = steps[-1] + 1 + (1 if rng.random() < 0.1 else 0)  # now and then a gap
        for rank in rng.sample(range(world), world):
            if rng.random() < 0.05:
                continue
            vals = np.array([[_value(rng) for _ in steps] for _ in keys])
            if len(keys) == 1:
                got = new.add_series(keys[0], rank, array("q", steps), array("d", vals[0]), now)
                assert got == old.add(keys[0], rank, steps, list(vals[0]), now)
            else:
                got = new.add_block(keys, rank, array("q", steps), vals.copy(), now)
                assert got == old.add_block(keys, rank, array("q", steps), vals.copy(), now)
            now += rng.choice([0.0, 0.0, 0.4, 1.5])  # the ranks' sends spread over the group timeout
            op = rng.random()
            if op < 0.3:
                assert _dump(new.emit(now)) == _dump(old.emit(now))
            elif op > 0.9:
                now = _shared_op(rng, 0.6 + (op - 0.9) * 4, new, old, world, nxt - 1, now, "abcy")
        _same_state(new, old, world, "abcy")
    assert _dump(new.emit(now, force=True)) == _dump(old.emit(now, force=True))


@pytest.mark.parametrize("chunk", range(4))
def test_ranks_in_step_equal_the_per_key_path(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded random sequences of ranks sending the same runs of steps (the aligned emit, no sort
    and no scatter), long and short, skipped and interleaved with emits, rank done/back, rewinds
    and timeouts: the same emitted points and counters with key groups as key by key."""
    taken: list[int] = []
    take = KeyGroup._take_aligned

    def counted(g: KeyGroup, now: float, wm: float, timeout: float, force: bool) -> Any:
        taken.append(len(g.segments))
        return take(g, now, wm, timeout, force)

    monkeypatch.setattr(KeyGroup, "_take_aligned", counted)
    for seed in range(chunk * 50, chunk * 50 + 50):
        _run_aligned(seed)
    assert sum(n > 1 for n in taken) > 100, "the aligned emit ran, for several ranks at once"


def test_only_segments_with_the_same_consecutive_steps_are_aligned() -> None:
    """Equal first step, last step and length are not enough unless the steps are consecutive."""
    g = KeyGroup(("x",), ("mean",), 3, 0.0)
    for rank, steps in [(0, [4, 5, 6]), (1, [4, 5, 6])]:
        g.add(rank, array("q", steps), np.zeros((1, len(steps))), 0.0)
    assert g._aligned()
    g.add(2, array("q", [4, 6]), np.zeros((1, 2)), 0.0)
    assert not g._aligned()
    h = KeyGroup(("x",), ("mean",), 2, 0.0)
    for rank, steps in [(0, [4, 6]), (1, [4, 6])]:
        h.add(rank, array("q", steps), np.zeros((1, 2)), 0.0)
    assert not h._aligned(), "equal but not consecutive: the general path"


def test_regular_blocks_stay_one_group() -> None:
    """A dict logged by every rank at increasing steps is reduced as one group: the fast path is taken."""
    red = Reducer(2, PolicyTable({}, "mean"), 60.0)
    keys = ("x", "y")
    for s in range(3):
        for r in range(2):
            red.add_block(keys, r, array("q", [s]), np.array([[float(r)], [float(s)]]), 0.0)
        out, blocks = red.emit_blocks(0.0)
        assert not out
        assert [(b.keys, list(b.steps), b.values.tolist(), list(b.counts)) for b in blocks] == [
            (keys, [s], [[0.5], [float(s)]], [2])
        ]
    assert set(red.groups) == {"x", "y"}
    assert not red.keys


def _journal_after(tmp_path: Path, blocks: bool) -> tuple[list[Any], dict[str, Any]]:
    """Dicts logged by 3 ranks (a repeated key, a crash and a restart on the way): what the journal holds."""
    a = Aggregator(make_cfg(tmp_path, world=3))
    a.reducer.blocks = blocks
    seqs = dict.fromkeys(range(3), 0)

    def log(rank: int, metrics: dict[str, dict[int, float]], now: float) -> None:
        seqs[rank] += 1
        batch(a, rank, seqs[rank], now=now, metrics=metrics)

    for r in range(3):
        hello(a, r)
    a.commit()
    for s in range(12):
        now = 1.0 + s * 0.05
        for r in range(3):
            log(r, {k: {s: s * 0.1 + r + i / 3} for i, k in enumerate("abcd")}, now)
        if s == 5:
            log(1, {"b": {5: 9.0}}, now)  # a repeat of one key: that group goes per key
        a.emit(now, hold=True)
        a.commit(stage=True, now=now)
        if s == 8:
            a.close()  # as a crash after the last commit: held groups and staged points are rebuilt
            a = Aggregator(make_cfg(tmp_path, world=3))
            a.reducer.blocks = blocks
    for r in range(3):
        bye(a, r, now=3.0)
    a.finalize()
    s = reopen(tmp_path)
    return [s.values(k) for k in "abcd"], {k: s.rank_points(k) for k in "abcd"}


def test_an_aggregator_stores_the_same_with_and_without_key_groups(tmp_path: Path) -> None:
    """Main series and rank series read back equal whether the reducer reduces dicts as groups or key by key."""
    assert _journal_after(tmp_path / "groups", True) == _journal_after(tmp_path / "keys", False)


def test_values_past_the_float_range_do_not_stop_either_path() -> None:
    """Two ranks logging 1e308 (or +inf and -inf) emit inf (NaN), on the group path and key by key."""
    keys = ("big", "infs")
    emitted: dict[bool, list[list[float]]] = {}
    for blocks in (True, False):
        red = Reducer(2, PolicyTable({}, "mean"), 60.0, blocks=blocks)
        for r, sign in ((0, 1.0), (1, -1.0)):
            red.add_block(keys, r, array("q", [0]), np.array([[1e308], [sign * math.inf]]), 0.0)
        out, got = red.emit_blocks(0.0)
        rows = [b.values[:, 0].tolist() for b in got]
        if out:
            rows.append([out[k].values[0] for k in keys])
        emitted[blocks] = rows
    for rows in emitted.values():
        assert len(rows) == 1
        assert rows[0][0] == math.inf
        assert math.isnan(rows[0][1])


def test_half_gap_is_nextafters_on_normal_doubles_and_zero_below() -> None:
    rng = np.random.default_rng(7)
    a = np.abs(rng.standard_normal(4000)) * 10.0 ** rng.integers(-300, 300, 4000)
    a[:40] = 2.0 ** rng.integers(-1020, 1020, 40)  # powers of two: the gap below is half the gap above
    a[40] = np.finfo(np.float64).max
    a[41] = np.finfo(np.float64).tiny
    with np.errstate(over="ignore"):
        want = np.minimum(a - np.nextafter(a, 0.0), np.nextafter(a, np.inf) - a) * 0.5
    assert np.array_equal(_half_gap(a), want)
    sub = np.array([0.0, 5e-324, 1e-310])
    assert np.array_equal(_half_gap(sub), np.zeros(3))  # not certified: fsum sums them
