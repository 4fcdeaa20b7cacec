"""What a rank without a sender thread would cost: its rows in a shared-memory ring, drained by one process per node.

Today every rank runs a sender thread that wakes each flush interval (50 ms) to cut, encode and
send its buffer and to read acks: ~1.2 µs of CPU a point at the paced load, half of goal 1's
direct figure, nearly all of it the cold CPU of each wake-up (docs/performance.md, rounds 14 and
41). This measures the floor of the other shape (docs/performance.md, rounds 42 and 43): the
training thread writes each ``log()`` row as one record into the library's ring in shared memory
(:mod:`coordinator.transport.ringrows` over :mod:`coordinator.transport.ring`: one
``struct.pack_into`` of the row's frame id, step, values and the record's two edges, then one
count store; the frame's keys named once in the ring's names file), and one process for the
node wakes every ``--drain-ms`` to copy every ring's new rows out as numpy arrays, freeing their
bytes only once the drain is checked (and, with ``--commit``, committed). Nothing wakes in the
rank, and a rank killed with SIGKILL loses nothing it wrote: its rows stay in the node's memory
until the drainer has them.

``--ranks`` writer processes each log a ``--keys``-key row ``--rate`` times a second for
``--seconds``; the drainer checks that every row of every ring arrives once, in order, with its
values (with ``--no-check``, only that every row arrives). With ``--commit`` the drainer also does
the aggregator's part: it commits each drain into a real store (:class:`Committer`); with
``--aggregator`` the real aggregator is the drainer (:mod:`coordinator.aggregator.rings`, the way
its server loop would run it: a drain and a commit each ``--drain-ms``, the sweep and the main
series' emission each second). Each repeat
also runs the same writers without the ring (the loop alone), and reports, per point logged: the
writers' CPU inside their writes (thread time around each), the drainer's CPU, and the writers'
whole CPU minus the loop alone's. CPU is read from ``/proc`` (schedstat's nanoseconds) over the
steady window: the first second and the last are left out.

    python -m benchmarks.shared_rings [--ranks 4] [--keys 100] [--rate 50] [--seconds 10] [--repeats 3]
        [--drain-ms 50] [--commit | --aggregator] [--no-check]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from array import array
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import med, task_cpu_s
from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.core import Aggregator
from coordinator.aggregator.rings import Rings
from coordinator.journal.records import MAIN_RANK, StagedBlock, TxnData
from coordinator.journal.store import LocalStore
from coordinator.transport import wire
from coordinator.transport.ring import RingDamaged, RingReader, RingWriter
from coordinator.transport.ringrows import RowReader, RowWriter

__all__ = ["Committer", "Trial", "check_rows", "drain", "main", "open_ring", "trial", "writer"]

_JOIN_S = 30.0
_OPEN_S = 10.0
"""How long the drainer waits for a writer to make its ring."""


def open_ring(path: Path, timeout_s: float = _OPEN_S) -> RowReader:
    """The reading end of the ring of rows a writer makes at ``path``, once it has made it.

    Raises:
        TimeoutError: no ring there within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return RowReader(RingReader(path))
        except (FileNotFoundError, RingDamaged):  # not made yet, or its header not written yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ring at {path} within {timeout_s} s") from None
            time.sleep(0.01)


def drain(ring: RowReader, keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy the rows published since the last drain out of ``ring``: (steps, values).

    Their bytes stay the writer's to keep until :meth:`RingReader.release` frees them (after the
    commit that holds them, with ``--commit``).

    Raises:
        AssertionError: the ring holds rows of a frame other than the writer's one.
    """
    rows = ring.read()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, keys))
    if len(rows) != 1 or len(next(iter(rows))) != keys:
        raise AssertionError(f"rows of frames {list(rows)}, not of one {keys}-key frame")
    steps, values, _ = next(iter(rows.values()))
    return steps, values


def check_rows(steps: np.ndarray, values: np.ndarray, first: int, keys: int, name: str) -> str:
    """What is wrong with drained rows that should be steps ``first``, ``first + 1``, ... of a writer
    (which logs ``step * keys + j`` for key j, exact in a float64); empty when nothing is."""
    want = np.arange(first, first + len(steps))
    if np.array_equal(steps, want) and np.array_equal(values, want[:, None] * keys + np.arange(keys, dtype=np.float64)):
        return ""
    return f"{name}: rows {first}..{first + len(steps) - 1} read back wrong (steps {steps[:3]}...)"


def writer(path: str | None, keys: int, rate: float, seconds: float, out: Any) -> None:
    """Log a ``keys``-key dict ``rate`` times a second for ``seconds``, into a ring it makes at ``path``
    (None: nowhere); a full ring is waited for (the drainer is behind)."""
    ring = RowWriter(RingWriter(Path(path), _capacity(keys))) if path else None
    data = {f"train/m{j:03d}": 0.0 for j in range(keys)}
    names = list(data)
    frame = tuple(names)
    start = time.monotonic()
    step = in_calls = 0
    while time.monotonic() - start < seconds:
        base = step * keys
        for j, k in enumerate(names):
            data[k] = float(base + j)
        if ring is not None:
            t = time.thread_time_ns()
            while not ring.row(frame, step, data.values()):
                time.sleep(0.001)
            in_calls += time.thread_time_ns() - t
        step += 1
        pause = start + step / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    if ring is not None:
        ring.close()
    out.put(("writer", step, in_calls))


class Committer:
    """The aggregator's part of a drain (``--commit``): each drain's rows committed into a real store.

    One transaction a drain: every rank's new rows staged as its block (as a rank's batch is now),
    and the steps every rank has reached reduced to their mean over the ranks, written as the
    main series' block with its counts.
    """

    def __init__(self, path: Path, keys: int, ranks: int) -> None:
        self.names = tuple(f"train/m{j:03d}" for j in range(keys))
        self.ranks = ranks
        self.pending: list[np.ndarray] = [np.zeros((0, keys)) for _ in range(ranks)]
        """Each rank's rows not yet reduced (its steps from :attr:`reduced` on)."""
        self.reduced = 0
        self.seq = 0
        self.store = LocalStore(path)
        self.store.start_checkpoints()
        self.store.commit(TxnData(key_policies=dict.fromkeys(self.names, "mean")))

    def commit(self, drained: list[tuple[np.ndarray, np.ndarray]], got: list[int]) -> None:
        """Commit one drain: ``drained[i]`` is ring i's (steps, values); ``got[i]`` its rows so far."""
        now = time.time()
        self.seq += 1
        txn = TxnData()
        for i, (steps, values) in enumerate(drained):
            if len(steps):
                txn.staged.append(
                    StagedBlock(self.names, i, 0, self.seq, now, array("q", steps.tobytes()), values.T.copy())
                )
                self.pending[i] = np.concatenate([self.pending[i], values])
            txn.senders[(i, 0)] = (self.seq, got[i] * len(self.names), self.seq, 0.0, now, "live", None, None)
        n = min(len(p) for p in self.pending)
        if n:
            mean = np.stack([p[:n] for p in self.pending]).mean(axis=0)
            self.pending = [p[n:] for p in self.pending]
            reduced = array("q", range(self.reduced, self.reduced + n))
            txn.chunks.append(
                StagedBlock(self.names, MAIN_RANK, 0, 0, now, reduced, mean.T.copy(), array("i", [self.ranks]) * n)
            )
            self.reduced += n
        self.store.commit(txn)

    def close(self, rows: int) -> str:
        """Close the store; what is wrong with what it holds (empty when nothing): ``rows`` rows staged
        in all, and the main series up to the last step reduced."""
        try:
            staged, main = self.store.staged_points(), self.store.points_after(0)[1]
        finally:
            self.store.close()
        keys = len(self.names)
        if staged != rows * keys or main != self.reduced * keys:
            want = f"{rows * keys} and {self.reduced * keys}"
            return f"the store holds {staged} staged and {main} main-series points, not {want}"
        return ""


def _drainer(
    paths: list[str], keys: int, interval_s: float, writers_done: Event, check: bool, store: str | None, out: Any
) -> None:
    """Drain every ring each ``interval_s`` until the writers are done and their rings empty; with ``check``,
    check each row (without, only the count of rows is checked); with ``store``, commit each drain there."""
    rings = [open_ring(Path(p)) for p in paths]
    committer = Committer(Path(store), keys, len(rings)) if store else None
    got = [0] * len(rings)
    wrong = ""
    last = False
    commits = 0
    while not last:
        last = writers_done.wait(interval_s)
        drained = [drain(ring, keys) for ring in rings]
        for i, (steps, values) in enumerate(drained):
            if check:
                wrong = wrong or check_rows(steps, values, got[i], keys, f"ring {i}")
            got[i] += len(steps)
        if committer is not None:
            committer.commit(drained, got)
            commits += 1
        for ring in rings:  # committed (or checked): the writer may use their bytes again
            ring.reader.release(ring.reader.cursor)
    for ring in rings:
        ring.close()
    if committer is not None:
        wrong = wrong or committer.close(sum(got))
    out.put(("drainer", got, wrong, commits))


def _aggregator_drainer(paths: list[str], keys: int, interval_s: float, writers_done: Event, d: str, out: Any) -> None:
    """``--aggregator``: the real aggregator takes the rings, as its server loop would with them wired in.

    Each ``interval_s``: :meth:`Rings.drain` into the open transaction, a staging commit, then
    :meth:`Rings.committed`; every second the server's sweep (liveness, health) and an emission of
    the complete groups (reduced to their mean, the main series); at the end ``finalize``. The
    store must then hold every row of every rank and each step all ranks reached, once.
    """
    for p in paths:  # each writer has made its ring
        open_ring(Path(p)).close()
    run = "ring-floor"
    agg = Aggregator(AggregatorConfig(run_id=run, store_path=f"{d}/run.db", world_size=len(paths)))
    rings = Rings(agg)
    for rank, p in enumerate(paths):
        agg.hello(wire.decode_envelope(wire.encode_envelope(wire.HELLO, run, rank, 1, 0)), {"pid": 0}, time.time())
        rings.attach(rank, 1, Path(p))
    last_sweep = 0.0
    last = False
    commits = 0
    while not last:
        last = writers_done.wait(interval_s)
        now = time.time()
        rings.drain(now, final=last)
        agg.commit(stage=True)
        rings.committed()
        commits += 1
        if now - last_sweep >= 1.0:
            last_sweep = now
            agg.check_liveness(now)
            agg.update_health(now)
            agg.emit(now, all_keys=True, hold=False)
    got = [agg.senders[(r, 1)].points // keys for r in range(len(paths))]
    rings.close()
    agg.finalize()
    store = LocalStore(f"{d}/run.db", readonly=True)
    try:
        first = "train/m000"
        wrong = "".join(
            f"rank {r} stored {len(store.values(first, r))} rows, not {n}; "
            for r, n in enumerate(got)
            if len(store.values(first, r)) != n
        )
        if len(store.values(first)) != min(got):
            wrong += f"the main series holds {len(store.values(first))} steps, not {min(got)}"
    finally:
        store.close()
    out.put(("drainer", got, wrong, commits))


def _capacity(keys: int) -> int:
    """A ring's bytes: 1 MiB, ~2 s of a 100-key row at 50 steps a second; more for rows that would not fit."""
    return max(1 << 20, 1 << (4 * (8 * keys + 24)).bit_length())


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid``."""
    return sum(task_cpu_s(t) for t in Path(f"/proc/{pid}/task").iterdir())


@dataclass(slots=True)
class Trial:
    """One run of the writers (with the ring and its drainer, or the loop alone), over its steady window."""

    points_per_s: float
    """Points the writers logged a second (rows x keys)."""
    writers_cpu_s: float
    """The writer processes' CPU seconds a second over the window."""
    drainer_cpu_s: float
    """The drainer's CPU seconds a second over the window (0 for the loop alone)."""
    call_us: float
    """CPU µs a point inside the writes, over the whole run (0 for the loop alone)."""
    commits: int = 0
    """Commits the drainer made (0 without ``commit`` or ``aggregator``)."""


def trial(
    ranks: int,
    keys: int,
    rate: float,
    seconds: float,
    drain_s: float,
    ring: bool,
    directory: Path,
    check: bool = True,
    commit: bool = False,
    aggregator: bool = False,
) -> Trial:
    """Run the writers (and, with ``ring``, the drainer) in processes of their own; read their CPU.

    Raises:
        AssertionError: a ring did not read back every row once, in order, with its values, or a
            process did not end within its bound.
    """
    if seconds <= 2.5:
        raise ValueError(f"seconds must be above 2.5 (the first and the last second are left out), not {seconds}")
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    done = ctx.Event()
    paths = [str(directory / f"ring{i}") for i in range(ranks)] if ring else []
    writers = [
        ctx.Process(target=writer, args=(paths[i] if ring else None, keys, rate, seconds, out)) for i in range(ranks)
    ]
    drainer = (
        ctx.Process(target=_aggregator_drainer, args=(paths, keys, drain_s, done, str(directory), out))
        if ring and aggregator
        else ctx.Process(
            target=_drainer,
            args=(paths, keys, drain_s, done, check, str(directory / "run.db") if commit else None, out),
        )
        if ring
        else None
    )
    procs = writers + ([drainer] if drainer else [])
    try:
        for p in procs:
            p.start()
        time.sleep(1.0)
        t0, cpu0 = time.monotonic(), [_process_cpu_s(p.pid or 0) for p in procs]
        time.sleep(seconds - 2.0)
        t1, cpu1 = time.monotonic(), [_process_cpu_s(p.pid or 0) for p in procs]
        ends = [out.get(timeout=seconds + _JOIN_S) for _ in writers]
        done.set()
        drained = out.get(timeout=_JOIN_S) if drainer else None
        for p in procs:
            p.join(_JOIN_S)
            if p.exitcode != 0:
                raise AssertionError(f"{p.name} ended with {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(_JOIN_S)
    rows = [e[1] for e in ends]
    if drained is not None:
        if drained[2]:
            raise AssertionError(drained[2])
        if sorted(drained[1]) != sorted(rows):
            raise AssertionError(f"the drainer read {drained[1]} rows, the writers wrote {rows}")
    span = t1 - t0
    cpu = [(b - a) / span for a, b in zip(cpu0, cpu1, strict=True)]
    return Trial(
        points_per_s=ranks * keys * rate,
        writers_cpu_s=sum(cpu[:ranks]),
        drainer_cpu_s=cpu[ranks] if drainer else 0.0,
        call_us=sum(e[2] for e in ends) / 1e3 / max(1, sum(rows) * keys),
        commits=drained[3] if drained is not None else 0,
    )


def main() -> None:
    """Alternate the loop alone and the ring, ``--repeats`` times; print each repeat and the medians."""
    ap = argparse.ArgumentParser(prog="benchmarks.shared_rings", description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50.0, help="rows a second per rank")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drain-ms", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-check", action="store_true", help="the drainer counts rows without checking each")
    ap.add_argument("--commit", action="store_true", help="the drainer commits each drain into a real store")
    ap.add_argument(
        "--aggregator", action="store_true", help="the real aggregator drains the rings (coordinator.aggregator.rings)"
    )
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = ap.parse_args()
    calls, drains, extra = [], [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            alone = trial(args.ranks, args.keys, args.rate, args.seconds, args.drain_ms / 1e3, False, Path(d))
            ring = trial(
                args.ranks,
                args.keys,
                args.rate,
                args.seconds,
                args.drain_ms / 1e3,
                True,
                Path(d),
                not args.no_check,
                args.commit,
                args.aggregator,
            )
        pps = ring.points_per_s
        calls.append(ring.call_us)
        drains.append(ring.drainer_cpu_s / pps * 1e6)
        extra.append((ring.writers_cpu_s - alone.writers_cpu_s) / pps * 1e6)
        print(
            f"repeat {r + 1}: {pps:,.0f} points/s; per point: in the writes {calls[-1]:.3f} µs, the drainer "
            f"{drains[-1]:.3f}, the writers minus the loop alone {extra[-1]:.3f} "
            f"(writers {ring.writers_cpu_s * 1e3:.2f} ms/s, alone {alone.writers_cpu_s * 1e3:.2f}); "
            f"{ring.commits} commits"
        )
    print(
        f"median of {args.repeats}: writes {med(calls):.3f} µs a point + drainer {med(drains):.3f} = "
        f"{med(calls) + med(drains):.3f} direct; writers minus the loop alone {med(extra):.3f}"
    )


if __name__ == "__main__":
    main()
