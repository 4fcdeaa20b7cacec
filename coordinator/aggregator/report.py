"""The run's end: how each rank ended, the run's final state, and the final report.

Only each rank's current incarnation counts (an elastic restart that recovered leaves its history
in the events, not in the state). A run is ``failed`` when a rank said it failed (it raised, or
``Run.fail``), was lost or died without a goodbye, never connected, or closed with points
undelivered (this wins over interruption); ``interrupted`` when a rank said it was interrupted
(SIGINT/SIGTERM) or was still running when the aggregator was stopped by a signal; ``finished``
only when every rank closed cleanly (:func:`coordinator.core.states.run_state`). The report names
the ranks and why; its names live in :mod:`.counters`.
"""

from __future__ import annotations

from typing import Any, Never, NotRequired, cast

from coordinator.aggregator.counters import Counters, Report
from coordinator.aggregator.health import Health, HealthFields
from coordinator.aggregator.outbox import Outbox
from coordinator.aggregator.reduce import Reducer
from coordinator.aggregator.senders import Senders
from coordinator.core.counters import UNDELIVERED
from coordinator.core.states import RankEnding, RunState, run_state

__all__ = ["build_report", "close_out", "per_rank"]


class _CountersOnly(Counters):
    """:class:`Counters` as they are built (from ``COUNTER_NAMES`` only): without the report's ``forwarders``.

    A TypedDict value may carry keys its type does not name, so mypy refuses to unpack a plain
    ``Counters`` into a :class:`Report` (the optional ``forwarders`` could come from it, untyped).
    """

    forwarders: NotRequired[Never]


def close_out(
    senders: Senders,
    health: Health,
    world_size: int,
    now: float,
    outbox: Outbox,
    reasons: list[str],
    *,
    stopped: bool = False,
) -> tuple[RunState, dict[str, str], dict[str, str]]:
    """Decide how each rank ended; record the problems in events and ``reasons``.

    Args:
        stopped: the aggregator was stopped by a signal: a rank still live was interrupted.

    Returns:
        The run's final state, and per rank (as a string) why it failed / was interrupted.
    """
    failed: dict[str, str] = {}
    interrupted: dict[str, str] = {}
    endings: list[RankEnding] = []
    # A rank that never connected while others did most likely crashed before init_run (and the
    # launcher then stopped the rest): a failure.
    nobody_came = not senders.rank_state
    for r in range(world_size):
        st = senders.rank_state.get(r)
        inc = senders.current.get(r)
        snd = None if inc is None else senders.senders.get((r, inc))
        if st == "live":
            detail = f"rank {r} did not close before the run ended (last step {health.last_step(r)})"
            outbox.event(now, "rank_lost" if not stopped else "rank_interrupted", r, detail)
        if st is None and stopped and nobody_came:
            # Stopped before any rank connected (Ctrl-C during init_run): nothing failed.
            interrupted[str(r)] = "never connected before the aggregator was stopped by a signal"
        elif st is None:
            failed[str(r)] = "never connected"
            reasons.append(f"rank {r} never connected")
        elif st == "live" and stopped:
            interrupted[str(r)] = "still running when the aggregator was stopped by a signal"
        elif st in ("live", "lost"):
            why = snd.reason if snd is not None and snd.reason else f"did not close (last state: {st})"
            failed[str(r)] = why
            reasons.append(f"rank {r} did not close (last state: {st})")
        elif snd is not None and snd.ending in ("failed", "interrupted"):
            endings.append(snd.ending)
            why = snd.reason or snd.ending
            (failed if snd.ending == "failed" else interrupted)[str(r)] = why
            reasons.append(f"rank {r} {snd.ending}: {why}")
        if snd is not None and snd.undelivered and str(r) not in failed:
            failed[str(r)] = f"closed with {snd.undelivered} points undelivered"
    lost = bool(failed) or any("undelivered" in x for x in reasons)
    state = run_state(endings + (["interrupted"] if interrupted else []), lost_ranks=lost)
    if state == "finished" and reasons:
        state = "failed"  # a reason not tied to a rank (e.g. rank 0 died) still fails the run
    return state, failed, interrupted


def per_rank(senders: Senders) -> dict[str, dict[str, Any]]:
    """Per rank, over its incarnations: points, batches, undelivered, incarnations, state, its own counters."""
    out: dict[str, dict[str, Any]] = {}
    for (rank, inc), s in sorted(senders.senders.items()):
        r = out.setdefault(str(rank), {"points": 0, "batches": 0, UNDELIVERED: 0, "incarnations": 0, "state": s.state})
        r["points"] += s.points
        r["batches"] += s.batches
        r[UNDELIVERED] += s.undelivered
        r["incarnations"] += 1
        for k, v in s.client.items():  # the rank's own counters: accepted, spooled, replayed, dropped
            if k != UNDELIVERED:
                r[k] = r.get(k, 0) + v
        if senders.current.get(rank) == inc:
            r["state"] = s.state
    return out


def build_report(
    *,
    counters: Counters,
    senders: Senders,
    reducer: Reducer,
    health: HealthFields,
    world_size: int,
    duration_s: float,
    reasons: list[str],
    state: str,
    failed_ranks: dict[str, str] | None = None,
    interrupted_ranks: dict[str, str] | None = None,
) -> Report:
    """The run's final report (stored with the run; see :class:`.counters.Report`)."""
    return Report(
        **cast(_CountersOnly, counters),  # new_counters/load_counters build only the COUNTER_NAMES keys
        late_points=reducer.late_points,
        replaced_points=reducer.replaced_points,
        ranks_seen=sorted(senders.rank_state),
        ranks_never_seen=[r for r in range(world_size) if r not in senders.rank_state],
        world_size=world_size,
        per_rank=per_rank(senders),
        duration_s=round(duration_s, 3),
        reasons=reasons,
        failed_ranks=failed_ranks or {},
        interrupted_ranks=interrupted_ranks or {},
        health={str(r): h for r, h in health.snapshot.items()},
        stragglers_seen=sorted(health.stragglers_seen),
        state=state,
    )
