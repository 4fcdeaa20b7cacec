"""Key groups emitted together: the same blocks and group states as each group's own emit, with one reduction."""

from __future__ import annotations

import copy
import random
from array import array
from typing import Any

import numpy as np
import pytest

from coordinator.aggregator import fused
from coordinator.aggregator.blocks import EmittedBlock, KeyGroup
from coordinator.aggregator.fused import emit_groups
from coordinator.aggregator.reduce import Reducer
from coordinator.core.policies import PolicyTable
from tests.aggregator.helpers import dump, round_end

_POLICIES = ("mean", "all", "sum", "rank0")


def _block(b: EmittedBlock) -> tuple[tuple[str, ...], bytes, bytes, bytes]:
    return b.keys, b.steps.tobytes(), np.ascontiguousarray(b.values).tobytes(), b.counts.tobytes()


def _state(g: KeyGroup) -> tuple[Any, ...]:
    """Everything an emit changes in a group, in comparable form (its per-key view, as split() gives it)."""
    pending = [(s.steps.tobytes(), s.values.tobytes(), s.created) for s in g.segments]
    return g.emitted_upto, g.settled, g.recent_entries, list(g.ranks), pending, g.split()


def _group(rng: random.Random, i: int, world: int) -> KeyGroup:
    keys = tuple(f"g{i}/k{j}" for j in range(rng.choice([1, 1, 1, 2, 5])))
    return KeyGroup(keys, tuple(rng.choice(_POLICIES) for _ in keys), world, 0.0)


def _feed(rng: random.Random, groups: list[KeyGroup], world: int, step: int, now: float) -> int:
    """One flush of every rank: mostly the same run of steps for every group; some groups get another run,
    miss a rank or get nothing. Returns the next step."""
    n = rng.choice([1, 2, 5, 50])
    for g in groups:
        kind = rng.random()
        if kind < 0.05:
            continue
        lo, m = (step, n) if kind < 0.85 else (step + rng.choice([0, 1]), max(1, n - 1))
        ranks = [r for r in range(world) if kind < 0.92 or rng.random() < 0.6]
        for r in rng.sample(ranks, len(ranks)):  # the ranks' batches arrive in any order
            steps = array("q", range(lo, lo + m))
            if g.fits(r, steps):
                vals = np.array([[rng.gauss(0, 1) * 10.0 ** rng.randint(-3, 3) for _ in steps] for _ in g.keys])
                g.add(r, steps, vals, now)
    return step + n + rng.choice([0, 0, 0, 1])


@pytest.mark.parametrize("seed", range(40))
def test_groups_emitted_together_give_what_each_gives_alone(seed: int) -> None:
    """Seeded groups of 1-5 keys and mixed policies, fed mostly in step (the fused case) and sometimes not
    (another run, a missing rank, nothing), emitted at random times, rank sets and forces: emit_groups gives
    the blocks each group's own emit gives, bit for bit, and leaves every group in the same state."""
    rng = random.Random(seed)
    world = rng.choice([1, 2, 3, 4, 8])
    groups = [_group(rng, i, world) for i in range(rng.randint(2, 12))]
    step, now = 0, 0.0
    for _ in range(30):
        step = _feed(rng, groups, world, step, now)
        now += rng.choice([0.05, 0.5, 2.0])
        done = set(rng.sample(range(world), rng.randint(0, world - 1))) if rng.random() < 0.2 else set()
        force = rng.random() < 0.1
        alone = copy.deepcopy(groups)
        want = [b for g in alone if (b := g.emit(now, done, frozenset(range(world)), 1.0, force)) is not None]
        got = emit_groups(groups, now, done, frozenset(range(world)), 1.0, force)
        assert sorted(map(_block, got)) == sorted(map(_block, want))
        for g, a in zip(groups, alone, strict=True):
            assert _state(g) == _state(a), g.keys


def test_groups_in_step_share_one_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty one-key groups and a 100-key group, every rank in step: the one-key groups are reduced by one
    call (the 100-key group, another run, by its own), and each gets its own block with its own means."""
    calls: list[int] = []
    real = fused.reduced

    def counting(policies: tuple[str, ...], *rest: Any) -> Any:
        calls.append(len(policies))
        return real(policies, *rest)

    monkeypatch.setattr(fused, "reduced", counting)
    world = 4
    ones = [KeyGroup((f"s{i}",), ("mean",), world, 0.0) for i in range(20)]
    wide = KeyGroup(tuple(f"d{i}" for i in range(100)), ("mean",) * 100, world, 0.0)
    for r in range(world):
        for i, g in enumerate(ones):
            g.add(r, array("q", range(50)), np.full((1, 50), 10.0 * i + r), 1.0)
        wide.add(r, array("q", range(10, 60)), np.full((100, 50), float(r)), 1.0)
    out = emit_groups([*ones, wide], 2.0, set(), frozenset(range(world)), 10.0, False)
    assert calls == [20]  # the wide group emits alone, through blocks.reduced
    by_keys = {b.keys: b for b in out}
    assert set(by_keys) == {g.keys for g in [*ones, wide]}
    for i, g in enumerate(ones):
        b = by_keys[g.keys]
        assert list(b.steps) == list(range(50)) and list(b.counts) == [world] * 50
        assert np.array_equal(b.values, np.full((1, 50), 10.0 * i + 1.5))
        assert g.segments == [] and g.emitted_upto == 49
    assert np.array_equal(by_keys[wide.keys].values, np.full((100, 50), 1.5))


@pytest.mark.parametrize("seed", range(12))
def test_a_dict_and_scalars_per_step_reduce_as_key_by_key(seed: int) -> None:
    """A training loop's frames (a 3-key dict and six scalars logged alone, each its own block) from every
    rank, sometimes a rank behind, a repeat or a rank done: the reducer with key groups (emitted together)
    gives what the per-key reducer gives, emit after emit."""
    rng = random.Random(seed)
    world = rng.choice([2, 3, 4])
    table = PolicyTable({"s1": "sum", "s2": "rank0"}, "mean")
    new = Reducer(world, table, 5.0)
    old = Reducer(world, table, 5.0, blocks=False)
    frames = [("a", "b", "c"), *[(f"s{i}",) for i in range(6)]]
    last = dict.fromkeys(range(world), -1)
    now = 0.0
    for _ in range(40):
        for r in range(world):
            if rng.random() < 0.1:
                continue  # this rank is behind this round
            start = last[r] + 1 if rng.random() > 0.03 else max(0, last[r] - 1)  # now and then a repeat
            n = rng.choice([1, 3, 10])
            last[r] = max(last[r], start + n - 1)
            for keys in frames:
                vals = np.array([[rng.uniform(-5, 5) for _ in range(n)] for _ in keys])
                steps = array("q", range(start, start + n))
                assert new.add_block(keys, r, steps, vals.copy(), now) == old.add_block(
                    keys, r, array("q", steps), vals.copy(), now
                )
        now = round_end(rng, new, old, world, now, 0.05)
    assert dump(new.emit(now, force=True)) == dump(old.emit(now, force=True))
