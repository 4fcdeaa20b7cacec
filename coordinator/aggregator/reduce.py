"""Cross-rank grouping and reduction of metric points into each key's main series.

A (key, step) group collects one value per rank. It is emitted, in step order per key, when
every rank that logs the key has reported that step or moved past it, or when it has waited
``group_timeout_s``. Until a key has been seen from every rank (or its first group timed out)
it is *unsettled*: groups wait for ranks that have not logged it yet, so the first rank to
arrive does not produce a one-rank mean. A point for a step at or below what was already
emitted is *late*: it stays in the rank's own series and is counted, never silently dropped.

A step a rank logs again (one incarnation) replaces its earlier value (the rule of
:mod:`coordinator.core.incarnations`) and counts as replaced: in a pending group directly, in a
recently emitted group (the last few kept, bounded) by re-emitting that step with the new value.
A rank that was closed or lost and is heard from again is waited for again from the next
unemitted step (:meth:`Reducer.rank_back`).

Keys the ranks log together as one dict arrive as blocks (:meth:`Reducer.add_block`) and are
reduced as one :class:`~coordinator.aggregator.blocks.KeyGroup` while they stay regular; the
group computes exactly what the per-key states below would, and turns into them when it cannot.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np

from coordinator.aggregator.blocks import FAST_POLICIES, RECENT_ENTRIES, EmittedBlock, KeyGroup, Matrix
from coordinator.aggregator.fused import emit_groups
from coordinator.aggregator.keystate import Emitted, KeyState, last_logged, newest, regroup
from coordinator.aggregator.sums import MEANS, REDUCERS, total
from coordinator.core.incarnations import is_replaced, replaced_from, start_order
from coordinator.core.policies import PolicyTable

__all__ = ["Emitted", "Reducer"]

SERIES_GROUP_FROM = 64
"""Points in a key's first chunk from which a key logged alone is reduced as a group of one
(:meth:`Reducer.add_series`)."""

MAX_REGROUPS = 8
"""How often one tuple of keys forms its group again after going per key (:meth:`Reducer._new_group`)."""

_TRIM_BY_POP = 64
"""Up to this many groups emitted at once, the oldest recent ones are popped one by one; past it,
the newest are copied into a new dict."""


class Reducer:
    """Groups per-rank points by (key, step) and reduces them across ranks.

    Not thread-safe: owned by the aggregator loop.
    """

    def __init__(self, world_size: int, policy: PolicyTable, group_timeout_s: float, *, blocks: bool = True) -> None:
        """A reducer for ranks ``0 .. world_size - 1``; ``blocks=False`` reduces every block key by key."""
        self.world = frozenset(range(world_size))
        self.world_size = world_size
        self.blocks = blocks
        self.groups: dict[str, KeyGroup] = {}
        """key -> the group it is reduced in (its keys have no entry in :attr:`keys` meanwhile)."""
        self._groups: dict[int, KeyGroup] = {}
        """Every group once (by id)."""
        self._touched_groups: dict[int, KeyGroup] = {}
        self.policy = policy
        self.group_timeout_s = group_timeout_s
        self.keys: dict[str, KeyState] = {}
        self._regroups: Counter[tuple[str, ...]] = Counter()
        self.done: set[int] = set()
        """Ranks that closed or were lost: never waited for again."""
        self.late_points = 0
        self.replaced_points = 0
        self._touched: set[str] = set()
        self.series_group_from = SERIES_GROUP_FROM
        """Points in a key's first chunk from which :meth:`add_series` reduces the key as a group of one."""

    def add(self, key: str, rank: int, steps: Iterable[int], values: Iterable[float], now: float) -> int:
        """Add one rank's points for ``key`` (steps in the order the rank logged them).

        Returns:
            How many of them repeat a step the rank already logged (each replaces the earlier value).
        """
        grp = self.groups.get(key)
        if grp is not None:  # the key alone leaves its group (the others may go on as one)
            if len(grp.keys) > 1:
                self._shed(grp, [grp.keys.index(key)])
            else:
                self._split(grp)
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState(self.policy(key), now)
        if st.policy == "per_rank":
            return 0
        pending = st.pending
        heap = st.heap
        emitted = st.emitted_upto
        hi = st.maxstep.get(rank, -1)
        repeats = 0
        for s, v in zip(steps, values, strict=True):
            cg = pending.get(s)
            if cg is None:
                if s <= emitted:
                    rg = st.recent.get(s)
                    if rg is not None and rank in rg:
                        rg[rank] = v
                        st.reemit.add(s)
                        repeats += 1
                    else:
                        self.late_points += 1
                    continue
                pending[s] = (now, {rank: v})
                heappush(heap, s)
            else:
                g = cg[1]
                if rank in g:
                    repeats += 1
                g[rank] = v
            if s > hi:
                hi = s
        st.maxstep[rank] = hi
        self.replaced_points += repeats
        self._touched.add(key)
        return repeats

    def add_series(self, key: str, rank: int, steps: array[int], values: array[float], now: float) -> int:
        """:meth:`add` for one key's chunk of a batch; a key a rank logs alone, many points a batch, goes the group way.

        A key whose first chunk holds :attr:`series_group_from` points or more (a rank logging it
        flat out, one key per call) is reduced as a key group of one (:class:`KeyGroup`: no work
        per point on arrival, one numpy pass per emit) for as long as its chunks stay regular; a
        key first seen in short chunks (a paced rank) stays on the per-key path, whose fixed cost
        per chunk is lower.

        Returns:
            As :meth:`add`: how many of the points repeat a step the rank already logged.
        """
        grp = self.groups.get(key)
        if grp is None:
            if len(steps) < self.series_group_from or key in self.keys or not self._new_group((key,), rank, steps, now):
                return self.add(key, rank, steps, values, now)
            grp = self.groups[key]
        if grp.keys != (key,) or not grp.fits(rank, steps):
            return self.add(key, rank, steps, values, now)  # it turns the group into per-key states first
        # A copy: the chunk's ``values`` go on to the rank's held points, which may extend them.
        grp.add(rank, steps, np.array(values, dtype=np.float64).reshape(1, len(values)), now)
        self._touched_groups[id(grp)] = grp
        return 0

    def add_block(self, keys: tuple[str, ...], rank: int, steps: array[int], values: Matrix, now: float) -> list[str]:
        """Add one rank's points of ``keys`` logged together (``values``: one row per key, a column per step).

        Regular blocks of the same keys are reduced as one group. A block whose keys are not one
        group's is shared out (:meth:`_add_parts`); anything irregular goes key by key.

        Returns:
            The keys with a repeated step (see :meth:`add`).
        """
        grp = self.groups.get(keys[0])
        if grp is not None and grp.keys == keys and grp.fits(rank, steps):
            grp.add(rank, steps, values, now)
            self._touched_groups[id(grp)] = grp
            return []
        if grp is None and self._new_group(keys, rank, steps, now):
            return self.add_block(keys, rank, steps, values, now)
        if self.blocks and len(keys) > 1 and len(set(keys)) == len(keys):
            return self._add_parts(keys, rank, steps, values, now)
        rows = values.tolist()
        return [k for k, row in zip(keys, rows, strict=True) if self.add(k, rank, steps, row, now)]

    def _add_parts(self, keys: tuple[str, ...], rank: int, steps: array[int], values: Matrix, now: float) -> list[str]:
        """A block of keys that are not one group's: each group among them takes its own keys' rows.

        A group that holds keys the block lacks keeps the larger part: it sheds the keys the block lacks,
        or, where those are most of it, the block's keys (:meth:`_shed`). So a key logged in two tuples
        (the frameworks' ``epoch``, in the training dict and in the validation dict) leaves its group
        alone, once, and the rest of the dict stays one group, where splitting the group made every key
        of the dict go point by point from then on (several times the aggregator's CPU). Of the rows no
        group takes, those of keys not known yet start a group of their own; the others go key by key.
        """
        at = {k: i for i, k in enumerate(keys)}
        taken: set[str] = set()
        for grp in {id(g): g for k in keys if (g := self.groups.get(k)) is not None}.values():
            inside = [i for i, k in enumerate(grp.keys) if k in at]
            if len(inside) < len(grp.keys):
                if 2 * len(inside) < len(grp.keys):
                    self._shed(grp, inside)  # most of the group is elsewhere: these keys leave it
                    continue
                self._shed(grp, [i for i, k in enumerate(grp.keys) if k not in at])
            if grp.fits(rank, steps):
                grp.add(rank, steps, values[[at[k] for k in grp.keys]], now)
                self._touched_groups[id(grp)] = grp
                taken.update(grp.keys)
            else:  # a repeat or a late point: its keys go the per-key way
                self._split(grp)
        rest = [k for k in keys if k not in taken]
        fresh = tuple(k for k in rest if k not in self.keys)
        if fresh and self._new_group(fresh, rank, steps, now):
            self.add_block(fresh, rank, steps, values[[at[k] for k in fresh]], now)
            rest = [k for k in rest if k in self.keys]
        return [k for k in rest if self.add(k, rank, steps, values[at[k]].tolist(), now)]

    def _new_group(self, keys: tuple[str, ...], rank: int, steps: array[int], now: float) -> bool:
        """Start a group for ``keys`` if none of them is known yet and their policies allow it, or if each went
        per key and they are regular again (:func:`~coordinator.aggregator.keystate.regroup`; at most
        :data:`MAX_REGROUPS` times a tuple: a dict that keeps turning irregular stays per key)."""
        if not self.blocks or not keys or not self.groups.keys().isdisjoint(keys) or len(set(keys)) != len(keys):
            return False
        again = not self.keys.keys().isdisjoint(keys)
        grp: KeyGroup | None = None
        if again and self._regroups[keys] < MAX_REGROUPS:
            grp = regroup(keys, [*map(self.keys.get, keys)], self.world_size)
        elif not again and FAST_POLICIES.issuperset(policies := tuple(map(self.policy, keys))):
            grp = KeyGroup(keys, policies, self.world_size, now)
        if grp is None or not grp.fits(rank, steps):
            return False
        if again:
            self._regroups[keys] += 1
            for k in keys:
                del self.keys[k]
                self._touched.discard(k)
        self.groups.update(dict.fromkeys(keys, grp))
        self._groups[id(grp)] = grp
        return True

    def _shed(self, grp: KeyGroup, drop: list[int]) -> None:
        """Take the keys of ``grp`` at positions ``drop`` (some, not all) into per-key states; it keeps the others."""
        touched = id(grp) in self._touched_groups
        gone = [grp.keys[i] for i in drop]
        for key, fields in zip(gone, grp.shed(drop), strict=True):
            del self.groups[key]
            st = self.keys[key] = KeyState(**fields)
            heapify(st.heap)
            if touched:
                self._touched.add(key)

    def _split(self, grp: KeyGroup) -> None:
        """Turn ``grp`` into the per-key states it stands for (the per-key path takes over its keys).

        Its keys are looked at by the next emit if the group would have been (it took points since
        the last emit), as the per-key path would look at them; a timeout waits for a sweep either way.
        """
        touched = self._touched_groups.pop(id(grp), None) is not None
        for key, fields in zip(grp.keys, grp.split(), strict=True):
            del self.groups[key]
            st = self.keys[key] = KeyState(**fields)
            heapify(st.heap)
            if touched:
                self._touched.add(key)
        del self._groups[id(grp)]

    def maxstep(self, key: str, rank: int) -> int | None:
        """The largest step ``rank`` logged of ``key`` (-1 if none; None if no rank logged the key)."""
        grp = self.groups.get(key)
        if grp is not None:
            return grp.maxstep.get(rank, -1)
        st = self.keys.get(key)
        return None if st is None else st.maxstep.get(rank, -1)

    def restore(self, key: str, main_last: int, chunks: Sequence[tuple[Any, ...]], now: float) -> None:
        """Rebuild a key's state after a restart from what is pending only; unsettled, as before the crash,
        while some rank has not logged it (waited for until a group timeout after the key's first chunk).

        Args:
            key: the metric key.
            main_last: the last emitted step of its main series (-1 if none).
            chunks: its rank chunks in journal order, as
                :meth:`~coordinator.journal.reader.JournalReader.restore_view` gives them: the
                summaries of all, the points only of those reaching past ``main_last``.
            now: the current time.
        """
        st = self.keys[key] = KeyState(self.policy(key), now, emitted_upto=main_last)
        if st.policy == "per_rank":
            return
        started: dict[int, dict[int, float]] = {}  # rank -> incarnation -> first chunk time
        first: dict[tuple[int, int], int] = {}  # (rank, incarnation) -> its first (smallest) step
        top: dict[tuple[int, int], int] = {}  # (rank, incarnation) -> its largest step
        for rank, inc, ts, lo, hi, *_ in chunks:
            by = started.setdefault(rank, {})
            by[inc] = min(ts, by.get(inc, ts))
            first[(rank, inc)] = min(lo, first.get((rank, inc), lo))
            top[(rank, inc)] = max(hi, top.get((rank, inc), hi))
        cuts: dict[tuple[int, int], int | None] = {}
        for rank, by in started.items():
            order: list[tuple[int, int | None]] = [(i, first[(rank, i)]) for i in start_order(by)]
            best = -1
            for inc, _ in order:
                cut = cuts[(rank, inc)] = replaced_from(inc, order)
                best = max(best, top[(rank, inc)] if cut is None else min(top[(rank, inc)], cut - 1))
            st.maxstep[rank] = best
        st.settled = self.world <= (self.done | st.maxstep.keys())
        st.first_seen = min([now, *(ts for _, _, ts, *_ in chunks)])
        for rank, inc, _, _, _, _, steps, values in chunks:
            if steps is None:
                continue
            cut = cuts[(rank, inc)]
            for s, v in zip(steps, values, strict=True):
                if s > main_last and not is_replaced(s, cut):
                    st.pending.setdefault(s, (now, {}))[1][rank] = v
        st.heap = list(st.pending)
        heapify(st.heap)
        self._touched.add(key)

    last_logged = staticmethod(last_logged)

    def rewind(self, key: str, rank: int, step: int) -> None:
        """A restarted incarnation of ``rank`` resumed ``key`` at ``step`` (from a checkpoint).

        The rank's values at the steps the restart replaces (:mod:`coordinator.core.incarnations`)
        are dropped and the groups from ``step`` on rebuilt: emission rewinds to ``step - 1``, and
        every rank's progress is capped below ``step`` so the groups wait for the restarted ranks
        to log those steps again (or for the group timeout).
        The store keeps the latest main value per step, so re-emitted steps replace stale ones.
        """
        if key in self.groups:
            self._split(self.groups[key])
        st = self.keys.get(key)
        if st is None:
            return
        self._touched.add(key)  # its groups changed: the next emit looks at it (as a split key's)
        if step <= st.emitted_upto:
            st.emitted_upto = step - 1
        for s in [s for s in st.recent if s >= step]:
            st.recent_entries -= len(st.recent.pop(s))
        st.reemit = {s for s in st.reemit if s < step}
        for s, (_, g) in st.pending.items():
            if is_replaced(s, step):
                g.pop(rank, None)
        st.pending = {s: cg for s, cg in st.pending.items() if cg[1]}
        st.heap = list(st.pending)
        heapify(st.heap)
        st.maxstep = {r: min(m, step - 1) for r, m in st.maxstep.items()}
        # A restart is under way: the ranks that logged this key are expected back (a lost old
        # incarnation is not the end of its rank); one that never returns is covered by the timeout.
        self.done.difference_update(st.maxstep)

    def rank_back(self, rank: int) -> None:
        """``rank`` (closed or lost) is heard from again: wait for it again from the next unemitted step.

        Its points for steps already emitted stay late; every pending and later group waits for it.
        """
        if rank in self.done:
            self.done.discard(rank)
            self._touch_all()

    def rank_done(self, rank: int) -> None:
        """Stop waiting for ``rank`` (closed or lost); its pending groups become emittable."""
        self.done.add(rank)
        self._touch_all()

    def _touch_all(self) -> None:
        self._touched.update(self.keys)
        self._touched_groups.update(self._groups)

    def emit(self, now: float, *, force: bool = False, all_keys: bool = False) -> dict[str, Emitted]:
        """Emit every complete or timed-out group, in step order per key.

        Args:
            now: the current time (``time.monotonic`` scale used for ``add``).
            force: emit everything pending (run end).
            all_keys: check every key (timeouts), not only those touched since the last call.
        """
        out, blocks = self.emit_blocks(now, force=force, all_keys=all_keys)
        for b in blocks:
            for key, row in zip(b.keys, b.values, strict=True):
                out[key] = Emitted(array("q", b.steps), array("d", row.tobytes()), array("i", b.counts))
        return out

    def emit_blocks(
        self, now: float, *, force: bool = False, all_keys: bool = False
    ) -> tuple[dict[str, Emitted], list[EmittedBlock]]:
        """:meth:`emit`, with what key groups emitted as blocks (no key is in both)."""
        groups = self._groups if (force or all_keys) else self._touched_groups
        blocks = emit_groups(groups.values(), now, self.done, self.world, self.group_timeout_s, force)
        self._touched_groups = {}
        out: dict[str, Emitted] = {}
        keys = self.keys if (force or all_keys) else self._touched
        for key in list(keys):
            st = self.keys[key]
            e: Emitted | None = None
            if st.reemit:
                reduce = REDUCERS[st.policy]
                e = out[key] = Emitted()
                for s in sorted(st.reemit):
                    e.steps.append(s)
                    e.values.append(reduce(st.recent[s]))
                    e.counts.append(len(st.recent[s]))
                e.reemitted = len(st.reemit)
                st.reemit.clear()
            if not st.pending:
                continue
            if not st.settled:
                logged = st.maxstep.keys()
                if self.world <= (self.done | logged) or now - st.first_seen >= self.group_timeout_s:
                    st.settled = True
            wm: float
            if not st.settled:
                wm = -1
            elif self.done:
                wm = min([m for r, m in st.maxstep.items() if r not in self.done], default=math.inf)
            else:
                wm = min(st.maxstep.values(), default=math.inf)
            limit = now - self.group_timeout_s
            reduce = REDUCERS[st.policy]
            mean = st.policy in MEANS  # the usual policy: reduced inline, no call per group
            pending = st.pending
            heap = st.heap
            recent = st.recent
            entries = st.recent_entries
            before = len(recent)
            while heap:
                s = heap[0]
                cg = pending.get(s)
                if cg is None:
                    heappop(heap)  # emitted or dropped already
                    continue
                created, g = cg
                if not (force or s <= wm or created <= limit):
                    break
                heappop(heap)
                del pending[s]
                if e is None:
                    e = out[key] = Emitted(array("q"), array("d"), array("i"))
                n = len(g)
                e.steps.append(s)
                e.values.append(total(g.values()) / n if mean else reduce(g))
                e.counts.append(n)
                st.emitted_upto = s
                recent[s] = g  # kept for repeats; the oldest past the bound are dropped below
                entries += n
            # Drop the oldest emitted groups past the bound, never the last one. Popping a dict's
            # first key one by one is quadratic once many were added (iteration skips the holes),
            # so a large emit keeps the newest groups in a new dict instead.
            if entries > RECENT_ENTRIES and len(recent) - before > _TRIM_BY_POP:
                st.recent, entries = newest(recent)
            else:
                while entries > RECENT_ENTRIES and len(recent) > 1:
                    entries -= len(recent.pop(next(iter(recent))))
            st.recent_entries = entries
        self._touched.clear()
        return out, blocks

    def pending_groups(self) -> int:
        """Groups still waiting for ranks."""
        grouped = sum(g.pending_steps() * len(g.keys) for g in self._groups.values())
        return sum(len(st.pending) for st in self.keys.values()) + grouped
