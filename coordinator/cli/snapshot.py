"""What ``coordinator top`` shows, read in one go from a (live) run: ranks, spools, forwarders, recent events.

Sources, all read-only: the journal's ``run`` row, ``senders`` table (per rank and incarnation:
state, points, first and last seen), the aggregator's ``sys/ranks/<r>/*`` health fields (last
step, steps/s, steps behind the fastest rank), ``events``, and its end (the largest chunk id);
the ranks' spool directories ``<spool root>/rank-<rank>-<incarnation>/`` (the spool root:
:func:`spool_root_of`); the forwarders' cursor files
``<run dir>/forward-<backend>[-<destination hash>].json`` (the journal position each tracker
has). Rates between two snapshots come from :func:`rates`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.cli.series import ReadOnlyRun, retry_busy
from coordinator.journal.paths import dir_bytes, spool_dir, writer_active
from coordinator.journal.records import RunInfo

__all__ = ["ForwarderRow", "RankRow", "Snapshot", "rates", "spool_root_of", "take"]


@dataclass(frozen=True, slots=True)
class RankRow:
    """One rank's line."""

    rank: int
    state: str
    """Its latest incarnation's sender state (``live``, ``closed``, ``lost``, ...), or ``not joined``."""
    restarts: int
    step: int | None
    steps_per_s: float | None
    lag_steps: int | None
    """Steps behind the fastest live rank (the aggregator's health fields)."""
    seen_s: float | None
    """Seconds since the aggregator last heard from it."""
    points: int
    points_per_s: float | None
    spool_bytes: int
    host: str | None
    pid: int | None
    straggler: bool


@dataclass(frozen=True, slots=True)
class ForwarderRow:
    """One tracker's forwarding progress."""

    backend: str
    cursor: int
    behind_chunks: int
    behind_points: int
    saved_s: float | None
    """Seconds since the cursor was last saved."""
    finished: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One read of the run."""

    info: RunInfo
    taken: float
    live: bool
    """A process (the aggregator) holds the run's writer lock."""
    journal_end: int
    journal_bytes: int
    ranks: list[RankRow]
    forwarders: list[ForwarderRow]
    events: list[tuple[float, str, int | None, str]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """The run has not ended (stored ``running`` with a live writer)."""
        return self.info.state == "running" and self.live

    @property
    def points(self) -> int:
        """Points the ranks sent that are committed."""
        return sum(r.points for r in self.ranks)


_log = logging.getLogger(__name__)


def spool_root_of(run: ReadOnlyRun, store_root: Path, run_id: str) -> Path:
    """Where the run's ranks spool: as the aggregator recorded it, else the default ``<store>/spool/<run id>``.

    The aggregator's ``config`` meta row holds ``spool_root`` (its ``AggregatorConfig.spool_root``:
    rank 0's ``Settings.spool_dir``, or the default) when its version records it; an empty or
    missing value, or a row that is not JSON, means the default (a bad row is warned about).
    """
    raw = retry_busy(lambda: run.reader.meta("config"))
    if raw:
        try:
            cfg = json.loads(raw)
        except ValueError as e:
            _log.warning("the run's config meta row is not JSON (%s); using the default spool directory", e)
            cfg = None
        recorded = cfg.get("spool_root") if isinstance(cfg, dict) else None
        if isinstance(recorded, str) and recorded:
            return Path(recorded)
    return spool_dir(store_root, run_id)


def _f(fields: dict[str, Any], path: str) -> Any:
    fv = fields.get(path)
    return None if fv is None else fv[1]


def take(run: ReadOnlyRun, spool_root: Path, *, recent_events: int = 4) -> Snapshot:
    """Read the run once (retrying while SQLite is busy)."""
    now = time.time()
    reader = run.reader
    info = retry_busy(reader.run_info)
    senders = retry_busy(reader.senders)
    fields = retry_busy(lambda: {p: fv for p, fv in reader.fields().items() if p.startswith("sys/ranks/")})
    stragglers = retry_busy(lambda: reader.field("sys/stragglers"))
    slow = set(stragglers[1]) if stragglers is not None and stragglers[0] == "list" else set()
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for s in senders:
        by_rank.setdefault(int(s["rank"]), []).append(s)
    ranks: list[RankRow] = []
    for r in range(max([info.world_size, *(k + 1 for k in by_rank)])):
        rows = by_rank.get(r, [])
        latest = rows[-1] if rows else None  # senders() orders each rank's incarnations by first_seen
        base = f"sys/ranks/{r}"
        span = None if latest is None else (latest["last_seen"] or 0) - (latest["first_seen"] or 0)
        step = _f(fields, f"{base}/last_step")
        ranks.append(
            RankRow(
                rank=r,
                state="not joined" if latest is None else str(latest["state"]),
                restarts=max(0, len(rows) - 1),
                step=None if step is None or step < 0 else int(step),
                steps_per_s=_f(fields, f"{base}/steps_per_s"),
                lag_steps=_f(fields, f"{base}/lag_steps"),
                seen_s=None if latest is None or latest["last_seen"] is None else max(0.0, now - latest["last_seen"]),
                points=sum(int(x["points"]) for x in rows),
                points_per_s=None if latest is None or not span or span <= 0 else latest["points"] / span,
                spool_bytes=sum(dir_bytes(d) for d in spool_root.glob(f"rank-{r}-*")),
                host=None if latest is None else latest["host"],
                pid=None if latest is None else latest["pid"],
                straggler=r in slow,
            )
        )
    end = retry_busy(reader.max_chunk_id)
    events = retry_busy(reader.events)[-recent_events:] if recent_events else []
    return Snapshot(
        info=info,
        taken=now,
        live=writer_active(run.path.parent),
        journal_end=end,
        journal_bytes=sum(_size(run.path.with_name(run.path.name + sfx)) for sfx in ("", "-wal")),
        ranks=ranks,
        forwarders=_forwarders(run, end, now),
        events=events,
    )


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _forwarders(run: ReadOnlyRun, end: int, now: float) -> list[ForwarderRow]:
    """Each forwarder's cursor file against the journal's end (the destination is not shown: it may hold secrets)."""
    out: list[ForwarderRow] = []
    for path in sorted(run.path.parent.glob("forward-*.json")):
        try:
            raw = json.loads(path.read_text())
            cursor = int(raw["cursor"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced right now, or not a cursor: the next frame reads it
        chunks, points = _behind(run, cursor)
        updated = raw.get("updated")
        out.append(
            ForwarderRow(
                backend=str(raw.get("backend") or path.stem.split("-")[1]),
                cursor=cursor,
                behind_chunks=chunks,
                behind_points=points,
                saved_s=None if not isinstance(updated, int | float) else max(0.0, now - updated),
                finished=raw.get("finished"),
            )
        )
    return out


def _behind(run: ReadOnlyRun, cursor: int) -> tuple[int, int]:
    """(chunks, points) committed after journal position ``cursor``."""
    return retry_busy(lambda: run.reader.points_after(cursor))


def rates(prev: Snapshot | None, cur: Snapshot) -> Snapshot:
    """``cur`` with each rank's points/s measured since ``prev`` (the first snapshot keeps its run average)."""
    if prev is None or cur.taken <= prev.taken:
        return cur
    dt = cur.taken - prev.taken
    before = {r.rank: r.points for r in prev.ranks}
    ranks = [
        replace(r, points_per_s=(r.points - before[r.rank]) / dt if r.rank in before else r.points_per_s)
        for r in cur.ranks
    ]
    return replace(cur, ranks=ranks)
