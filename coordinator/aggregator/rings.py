"""The aggregator's side of the rings (:mod:`coordinator.transport.ringrows`): rows taken straight
from the rings of its node's ranks, exactly once through its own crashes.

Each attached ring is read before a commit (:meth:`Rings.drain`); its rows go in as the rank's
points, as a batch's blocks would, and the ring's cursor goes into the same transaction (a meta
row, ``ring:<rank>-<incarnation>``). Only once that commit is on disk are the ring's bytes freed
for the writer (:meth:`Rings.committed`). A restarted aggregator attaches each ring at the cursor
its journal kept, so a row is stored once whether the crash came before the commit (read again)
or after it (its bytes already freed, or skipped by the kept cursor).

A rank offers its ring in its HELLO (``{"ring": {"path", "boot"}}``, ``Settings.rings``); the
server attaches it (:meth:`Rings.offer`) when the ring is on this machine (the same boot id) and
opens, and says so in the WELCOME: only then does the rank write rows into it. The ring's path is
kept in the journal too (``ringpath:<rank>-<incarnation>``), so a restarted aggregator reads the
rings of ranks that died while it was down (:meth:`Rings.reattach`).

As it attaches the first ring in a directory, the aggregator looks there (and in ``/dev/shm``)
for rings no process holds, left by jobs that died with their aggregator: it warns with their
runs and memory, and counts them in the report (``left_rings``). It leaves them alone: their
unread rows are their runs' (``coordinator sync``), and ``coordinator rings --remove`` deletes them.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from pathlib import Path

import numpy as np

from coordinator.aggregator.core import Aggregator
from coordinator.transport import wire
from coordinator.transport.ring import RingDamaged, RingReader
from coordinator.transport.ringplace import SHM, boot_id, left_rings, ring_named
from coordinator.transport.ringrows import STAMP_SHIFT, RowReader, Rows, ages_s, names_path, stamp

__all__ = ["BOOT_ID", "DRAIN_MS", "RING_PATHS", "Rings", "meta_key", "recover_rings"]

_log = logging.getLogger("coordinator.aggregator")

_STAMP_S = 2.0**STAMP_SHIFT / 1e9
"""Seconds of one unit of a row's stamp."""

RING_PATHS = "ringpath:"
"""The prefix of the meta rows that name each (rank, incarnation)'s ring: ``ringpath:<rank>-<incarnation>``."""

DRAIN_MS = (100, 1000)
"""The shortest and the longest wait between two reads of the ranks' rings (and commits of what they held)
when nothing else wakes the loop. A ring keeps what a killed rank wrote, so this is the live view's lag,
not a kill window; a ``wait()``, ``sync()`` or closing rank has its ring read at once (with the commit its
reply waits for). Each read's commit costs the aggregator about the same whatever it holds, so it reads
as seldom as the rings allow (:meth:`Rings.pace`): in the paced job (4 ranks, 100-key rows at 50 steps/s)
0.78 µs a point at 100 ms, 0.43 at 250 ms (round 44), 0.26-0.28 at 1 s against 0.52 at 250 ms (round 48)."""

_FILL = 1 / 8
"""The share of a ring that may fill between two reads (:meth:`Rings.pace`): a rank that logs eight times
faster than the last read saw still has room before its rows go over the socket (``ring_full``)."""

_RATE_WINDOW_S = 0.05
"""The shortest time a ring's rate of filling is measured over (:meth:`Rings.pace`)."""


BOOT_ID = boot_id()
"""This machine's boot id ("" where there is none to read): a rank's ring is read only on its own machine."""


def meta_key(rank: int, incarnation: int) -> str:
    """The meta row that keeps the committed cursor of (rank, incarnation)'s ring."""
    return f"ring:{rank}-{incarnation}"


class Rings:
    """The rings attached to one aggregator, by (rank, incarnation)."""

    def __init__(self, agg: Aggregator, look_in: tuple[Path, ...] = (SHM,)) -> None:
        self.agg = agg
        self._look_in = look_in
        """Where to look for left rings besides each attached ring's directory (:meth:`look_for_left`)."""
        self.readers: dict[tuple[int, int], RowReader] = {}
        self._read: dict[tuple[int, int], int] = {}
        """The cursor of each ring written into the open transaction (freed at its commit)."""
        self._looked: set[Path] = set()
        """The directories searched for left rings (:meth:`look_for_left`)."""
        self.drain_ms = DRAIN_MS[0]
        """How long the loop may wait before it reads the rings again (:meth:`pace`)."""
        self._written: dict[tuple[int, int], int] = {}
        """Each ring's ``written`` at the last :meth:`pace` that measured."""
        self._paced_at = time.monotonic()

    def attach(self, rank: int, incarnation: int, path: Path) -> int:
        """Read (rank, incarnation)'s ring at ``path`` from the cursor the journal kept (or its start);
        returns that cursor. The sender must be registered (its HELLO taken).

        Raises:
            RingDamaged: ``path`` is not a ring, or the kept cursor is outside what it holds.
        """
        kept = self.agg.store.meta(meta_key(rank, incarnation))
        reader = RingReader(path, start=None if kept is None else int(kept))
        self.readers[(rank, incarnation)] = RowReader(reader)
        # Rows arrive a drain at a time: a rank that logged a step just after one is not behind for that.
        health = self.agg.health
        health.behind_grace_s = max(health.behind_grace_s, DRAIN_MS[1] / 1000)
        return reader.cursor

    def offer(self, rank: int, incarnation: int, info: object) -> bool:
        """A HELLO's ring offer (``{"path": str, "boot": str}``): attach it if it is on this machine; whether it is.

        A ring already attached (a HELLO again after a reconnect, or after a restart that
        reattached it) stays as it is. A ring on another machine, or one that does not open, is
        refused: the rank then sends everything over its socket.
        """
        if (rank, incarnation) in self.readers:
            return True
        if not isinstance(info, dict) or type(info.get("path")) is not str or type(info.get("boot")) is not str:
            return False
        if not BOOT_ID or info["boot"] != BOOT_ID:
            return False
        path = Path(info["path"])
        if not ring_named(path):
            _log.warning("rank %d: %s is not a ring's name; it sends over its socket", rank, path)
            return False
        try:
            self.attach(rank, incarnation, path)
        except (OSError, ValueError) as e:  # RingDamaged is a ValueError
            _log.warning("rank %d: its ring %s was not attached (%s); it sends over its socket", rank, path, e)
            return False
        self.agg.store.set_meta(f"{RING_PATHS}{rank}-{incarnation}", str(path))
        self.look_for_left([path.parent, *self._look_in])
        return True

    def look_for_left(self, dirs: list[Path]) -> int:
        """Warn of the rings in ``dirs`` (each searched once) that no process holds; how many this call found.

        They take memory that ``/dev/shm`` (64 MiB in a container by default) may not have for this
        job's rings, whose ranks then fall back to their spool directories. The report's
        ``left_rings`` counts them.
        """
        new = [d for d in dict.fromkeys(dirs) if d not in self._looked]
        self._looked.update(new)
        left = left_rings(new)
        if left:
            runs = sorted({r.run_id for r in left})
            unread = [r for r in left if r.unread]
            _log.warning(
                "%d ring(s) of jobs that ended without removing them take %.1f MiB in %s (runs %s; %d with rows "
                "never committed: `coordinator sync <run>` stores them). `coordinator rings --remove` deletes them.",
                len(left),
                sum(r.bytes for r in left) / 2**20,
                ", ".join(sorted({str(r.path.parent) for r in left})),
                ", ".join(runs[:8]) + (", ..." if len(runs) > 8 else ""),
                len(unread),
            )
            self.agg.counters["left_rings"] += len(left)
        return len(left)

    def reattach(self) -> int:
        """Attach the rings the journal names whose files are still there (a restart); how many.

        A rank that died while the aggregator was down never says HELLO again; its rows are
        still in its ring, and read from where the journal's cursor says.
        """
        n = 0
        for key, path in self.agg.store.metas(RING_PATHS).items():
            rank, _, inc = key[len(RING_PATHS) :].partition("-")
            if (int(rank), int(inc)) in self.agg.senders and Path(path).exists():
                try:
                    self.attach(int(rank), int(inc), Path(path))
                except (OSError, ValueError) as e:
                    _log.error("rank %s: its ring %s could not be read again after a restart: %s", rank, path, e)
                    self.agg.counters["ring_errors"] += 1
                    continue
                n += 1
        return n

    def drain(self, now: float, *, final: bool = False, only: tuple[int, int] | None = None) -> int:
        """Take every attached ring's new rows into the open transaction, with each ring's cursor; the points.

        ``final``: the writers are gone (a record that does not read whole is damage, not late).
        ``only``: that (rank, incarnation)'s ring alone (the server's, before each of its batches: a row is
        applied before any later write of its key that came over the socket).
        A damaged ring (:class:`RingDamaged`) gives nothing of its pass: it is counted
        (``ring_errors``, one of the report's problems), logged and detached.
        """
        points = 0
        readers = self.readers
        for (rank, inc), reader in list(readers.items()) if only is None else [(only, readers[only])]:
            try:
                rows = reader.read(final=final)
                if rows:
                    points += self._ingest(rank, inc, rows, now)
                    self._read[(rank, inc)] = reader.reader.cursor
                    self.agg.outbox.txn.meta[meta_key(rank, inc)] = str(reader.reader.cursor)
            except RingDamaged as e:  # counted and reported; the rank's other rings and ranks go on
                _log.error("rank %d: its ring is damaged, no more of it is read: %s", rank, e)
                self.agg.counters["ring_errors"] += 1
                del self.readers[(rank, inc)]
                self._read.pop((rank, inc), None)  # its passes before the damage stay in the transaction
                reader.close()
        return points

    def pace(self) -> int:
        """The wait until the next read (ms), from how fast the busiest ring filled: long enough that it fills
        :data:`_FILL` of itself, within :data:`DRAIN_MS`. A read costs about the same whatever it takes, so a job
        that logs slowly is read once a second, a fast one up to ten times. The rate is taken from the rings'
        headers over at least :data:`_RATE_WINDOW_S` (a pass right after another would see nothing written)."""
        t = time.monotonic()
        if t - self._paced_at >= _RATE_WINDOW_S:
            filling = 0.0
            seen = {}
            for key, reader in self.readers.items():
                ring = reader.reader
                seen[key] = written = ring.written
                filling = max(filling, (written - self._written.get(key, written)) / ring.capacity)
            lo, hi = DRAIN_MS
            rate = filling / (t - self._paced_at)
            self.drain_ms = hi if rate <= 0 else int(min(hi, max(lo, 1000 * _FILL / rate)))
            self._written, self._paced_at = seen, t
        return self.drain_ms

    def _ingest(self, rank: int, inc: int, rows: Rows, now: float) -> int:
        """Ingest one ring's rows as (rank, inc)'s points: each frame's rows as one block of a batch."""
        agg = self.agg
        snd = agg.senders[(rank, inc)]
        last_steps = agg.registry.steps_of(rank)
        ts = time.time()
        n = 0
        dated: list[tuple[np.ndarray, np.ndarray]] = []  # training rows' steps and stamps (system/* is not progress)
        self.agg.counters["ring_points"] += sum(len(steps) * len(keys) for keys, (steps, _, _) in rows.items())
        for keys, (steps, values, stamps) in rows.items():
            blk = wire.Block(keys, array("q", steps.astype("<i8").tobytes()), np.ascontiguousarray(values.T))
            n += agg.ingest_block(snd, 0, ts, blk, last_steps, now)
            if not all(k.startswith("system/") for k in keys):
                dated.append((steps, stamps))
        if dated and not snd.superseded:
            self._progress(rank, dated, now)
        if snd.state == "live":  # rows stand for the rank's heartbeat, which it skips while it writes them
            snd.heard, snd.last_seen = time.monotonic(), now
        elif snd.state == "lost" and _newest_age(rows) < time.monotonic() - snd.heard - agg.cfg.liveness_timeout_s:
            agg.registry.hear(snd, now)  # written after it went silent for good: it is back (a dead rank's are not)
        snd.points += n
        agg.counters["points"] += n
        agg.registry.persist(snd)
        return n

    def _progress(self, rank: int, dated: list[tuple[np.ndarray, np.ndarray]], now: float) -> None:
        """Tell the health check when ``rank`` reached its steps: when its rows were written (their stamps),
        not ``now``."""
        few = sum(len(d[0]) for d in dated) <= _FEW_ROWS
        for step, at in (progress_few if few else progress_many)(dated, now, stamp()):
            self.agg.health.progress(rank, step, at)

    def committed(self) -> None:
        """The transaction holding the last drains is on disk: free their bytes for the writers."""
        for key, cursor in self._read.items():
            self.readers[key].reader.release(cursor)
        self._read.clear()

    def detach_drained(self) -> list[tuple[int, int]]:
        """Close and remove the rings whose writers closed and whose every row is committed; which they were."""
        gone = [k for k, r in self.readers.items() if r.reader.drained and k not in self._read]
        for key in gone:
            self._remove(key)
        return gone

    def _remove(self, key: tuple[int, int]) -> None:
        """Close a ring and remove its files (the rank removes them too once its BYE was answered)."""
        reader = self.readers.pop(key)
        path = reader.reader.path
        reader.close()
        path.unlink(missing_ok=True)
        names_path(path).unlink(missing_ok=True)

    def remove_all(self) -> None:
        """The run ended and every drain is committed: remove every ring (their writers are closed or dead)."""
        for key in list(self.readers):
            self._remove(key)

    def close(self) -> None:
        """Close every ring's reading end (their files stay: a restart reads them again)."""
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


_FEW_ROWS = 256
"""Up to this many rows a drain's progress is found row by row (:func:`progress_few`), past it with
numpy (:func:`progress_many`): a paced rank brings a dozen rows a drain, which numpy's fixed costs
would make ~3x dearer (28 against 11 µs), and a rank logging scalars key by key thousands."""


def _newest_age(rows: Rows) -> float:
    """Seconds since the newest of ``rows`` was written (inf when none carries a stamp)."""
    stamped = [st[st != 0] for _, _, st in rows.values()]
    return min((float(ages_s(st).min()) for st in stamped if len(st)), default=math.inf)


def progress_few(dated: list[tuple[np.ndarray, np.ndarray]], now: float, mark: int) -> list[tuple[int, float]]:
    """A ring's progress in one drain: (highest step written by then, when) once per stamp at which it rose,
    oldest first, from each training frame's (steps, stamps); ``now`` is this machine's time and ``mark``
    the stamp of that moment."""
    rows = sorted(
        (-((mark - sp) & 0xFFFFFFFF) if sp else 0, st)  # oldest first; no stamp: now
        for steps, stamps in dated
        for st, sp in zip(steps.tolist(), stamps.tolist(), strict=True)
    )
    out: list[tuple[int, float]] = []
    top, at = -1, 1
    for neg_age, st in rows:
        if st > top:
            if neg_age != at and top >= 0:
                out.append((top, now + at * _STAMP_S))
            top, at = st, neg_age
    if top >= 0:
        out.append((top, now + at * _STAMP_S))
    return out


def progress_many(dated: list[tuple[np.ndarray, np.ndarray]], now: float, mark: int) -> list[tuple[int, float]]:
    """:func:`progress_few`, with numpy (the same answer: ``tests/aggregator/test_rings.py`` compares them)."""
    steps = np.concatenate([d[0] for d in dated])
    at = now - ages_s(np.concatenate([d[1] for d in dated]), mark)
    order = np.argsort(at, kind="stable")
    at, top = at[order], np.maximum.accumulate(steps[order])
    rise = np.flatnonzero(np.diff(top, prepend=-1) > 0)  # where the highest step so far goes up
    last = np.append(at[rise][1:] != at[rise][:-1], True)  # the last rise of each stamp
    return [(int(top[i]), float(at[i])) for i in rise[last].tolist()]


def recover_rings(agg: Aggregator) -> int:
    """After the job (``coordinator sync``): store what the rings the journal names still hold, then remove them;
    the points.

    The ranks and the aggregator are gone (a killed job); a ring's file outlives them in ``/dev/shm``
    until the machine restarts, and is read from the cursor the journal kept. Safe to repeat.
    """
    rings = Rings(agg)
    if not rings.reattach():
        return 0
    try:
        points = rings.drain(time.time(), final=True)
        agg.commit()
        rings.committed()
        rings.remove_all()
    finally:
        rings.close()
    if points:
        _log.info("stored %d points left in the ranks' rings", points)
    return points
