"""The run's end: how each rank ended, the run's final state, and the final report.

A run is ``finished`` when nothing went wrong and ``failed`` with a list of reasons otherwise
(a rank never connected, did not close, closed with undelivered points, rank 0 died, the
aggregator was stopped by a signal). The report's names live in :mod:`.counters`.
"""

from __future__ import annotations

from typing import Any

from coordinator.aggregator.counters import Counters, Report
from coordinator.aggregator.health import Health, HealthFields
from coordinator.aggregator.outbox import Outbox
from coordinator.aggregator.reduce import Reducer
from coordinator.aggregator.senders import Senders
from coordinator.core.counters import UNDELIVERED

__all__ = ["build_report", "close_out", "per_rank"]


def close_out(senders: Senders, health: Health, world_size: int, now: float, outbox: Outbox, reasons: list[str]) -> str:
    """Record every rank that did not close, in events and ``reasons``; return the run's final state."""
    for r in range(world_size):
        st = senders.rank_state.get(r)
        if st == "live":
            detail = f"rank {r} did not close before the run ended (last step {health.last_step(r)})"
            outbox.event(now, "rank_lost", r, detail)
        if st is None:
            reasons.append(f"rank {r} never connected")
        elif st in ("live", "lost"):
            reasons.append(f"rank {r} did not close (last state: {st})")
    return "failed" if reasons else "finished"


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
) -> Report:
    """The run's final report (stored with the run; see :class:`.counters.Report`)."""
    return Report(
        **counters,  # type: ignore[typeddict-item]  # mypy false positive: "forwarders" is optional
        late_points=reducer.late_points,
        replaced_points=reducer.replaced_points,
        ranks_seen=sorted(senders.rank_state),
        ranks_never_seen=[r for r in range(world_size) if r not in senders.rank_state],
        world_size=world_size,
        per_rank=per_rank(senders),
        duration_s=round(duration_s, 3),
        reasons=reasons,
        health={str(r): h for r, h in health.snapshot.items()},
        stragglers_seen=sorted(health.stragglers_seen),
        state=state,
    )
