"""The names of the final report's numbers, once: the aggregator's counters and the report's shape.

The counters are saved with every commit (meta ``counters``), so a restarted aggregator's report
counts the whole run. The report is stored as JSON with the run and read by ``coordinator show``,
the client's failure message, the tests and the benchmarks; its per-rank entries also carry each
rank's own counters from its goodbye (:class:`coordinator.core.counters.ByeCounters`).
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict, cast

__all__ = ["COUNTER_NAMES", "HEADLINE", "PROBLEMS", "Counters", "Report", "load_counters", "new_counters"]


class Counters(TypedDict):
    """What the aggregator counts while it ingests (the first keys of the report)."""

    batches: int  # new batches ingested (duplicates excluded)
    points: int  # per-rank points ingested
    duplicate_batches: int  # resent batches recognised by sequence number and dropped
    bad_frames: int  # undecodable or refused messages and spool records
    gaps: int  # batches refused because an earlier one was missing
    fenced_batches: int  # messages of an incarnation a newer one replaced
    conflicts: int  # field writes that disagreed with another rank's
    main_points: int  # points of the reduced (main) series
    unknown_sender: int  # messages of senders that never said HELLO
    rewinds: int  # keys a restarted incarnation re-logged from an earlier step
    recovered_points: int  # points replayed from spools at the run's end or by an upload
    refused_clients: int  # CURVE clients the allow-list refused (no job secret) since this aggregator started
    ranks_returned: int  # times a rank marked lost was heard from again and re-included
    texts: int  # points of text series ingested (also counted in points)
    kind_conflicts: int  # points refused: numbers for a text series' key, or texts for a numeric one
    checkpoint_failures: int  # WAL checkpoints that failed off the loop (nothing lost: the log keeps every page)
    ring_points: int  # per-rank points read from the ranks' shared rings (also counted in points)
    ring_errors: int  # rings found damaged or not readable again after a restart (their later rows unread)
    left_rings: int  # rings of other jobs that no process held, found where this run's rings are (not its own)


class Report(Counters):
    """The run's final report: the counters, then how the ranks and the run ended."""

    late_points: int  # points for a step whose group was already emitted
    replaced_points: int  # points a rank logged again for a step it had logged (the later value kept)
    ranks_seen: list[int]
    ranks_never_seen: list[int]
    world_size: int
    per_rank: dict[str, dict[str, Any]]  # points, batches, undelivered, incarnations, state, + BYE counters
    duration_s: float
    reasons: list[str]  # why the run failed or was interrupted (empty: finished)
    failed_ranks: dict[str, str]  # rank -> why it failed (raised, Run.fail, died, lost, never came)
    interrupted_ranks: dict[str, str]  # rank -> why it was interrupted (SIGINT/SIGTERM)
    health: dict[str, dict[str, Any]]  # the last health snapshot per rank
    stragglers_seen: list[int]
    state: str  # "finished", "failed" or "interrupted" (coordinator.core.states)
    forwarders: NotRequired[dict[str, Any]]  # per backend: what its forwarder did (only with trackers)


COUNTER_NAMES: tuple[str, ...] = tuple(Counters.__annotations__)

HEADLINE: tuple[str, ...] = (
    "points",
    "main_points",
    "batches",
    "duplicate_batches",
    "bad_frames",
    "late_points",
    "replaced_points",
    "conflicts",
    "duration_s",
)
"""The report's headline numbers, in the order ``coordinator show`` prints them."""

PROBLEMS: tuple[str, ...] = (
    "duplicate_batches",
    "gaps",
    "bad_frames",
    "late_points",
    "replaced_points",
    "kind_conflicts",
    "checkpoint_failures",
    "ring_errors",
)
"""Numbers that are zero in a healthy run on a healthy machine (the benchmarks check them)."""


def new_counters() -> Counters:
    """Every counter at zero."""
    return cast(Counters, dict.fromkeys(COUNTER_NAMES, 0))


def load_counters(saved: str | None) -> Counters:
    """The counters a previous aggregator of the run saved (zero where it saved none)."""
    counters = new_counters()
    by_name = cast(dict[str, int], counters)
    for k, v in (json.loads(saved) if saved else {}).items():
        if k in by_name and isinstance(v, int):
            by_name[k] = v
    return counters
