"""How a run and each of its ranks ended: the run states, and what a closing rank says about itself.

A run is ``running`` until the aggregator finishes it; then it is ``finished`` only if every rank
closed cleanly, ``failed`` if any rank raised, called ``Run.fail`` or died (this wins over
``interrupted``), and ``interrupted`` if the job was stopped by SIGINT/SIGTERM without a failure.
Trackers get the nearest state they know (MLflow's names: FINISHED, FAILED, KILLED).
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

__all__ = ["RUN_STATES", "TRACKER_STATES", "RankEnd", "RankEnding", "RunState", "run_state"]

RunState = Literal["running", "finished", "failed", "interrupted"]
RUN_STATES: Final[tuple[RunState, ...]] = ("running", "finished", "failed", "interrupted")

RankEnding = Literal["clean", "failed", "interrupted"]
"""How one rank's process left its run: ``clean`` (stop() or the end of a ``with`` block without an
exception), ``failed`` (an exception, ``Run.fail``), ``interrupted`` (SIGINT/SIGTERM, KeyboardInterrupt)."""

TRACKER_STATES: Final[dict[str, str]] = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
"""Run state -> the tracker's terminal state (MLflow's names; each adapter maps to its nearest)."""


class RankEnd(TypedDict, total=False):
    """What a closing rank adds to its BYE payload beside its delivery counters."""

    ending: RankEnding
    reason: str  # for failed/interrupted: the exception type and message, or Run.fail's reason (redacted)
    traceback: str  # for failed by an exception: its formatted traceback (redacted, at most 16 KiB)


def run_state(endings: list[RankEnding], *, lost_ranks: bool) -> RunState:
    """The run's final state from its ranks' endings: any failure (or a lost rank) wins, then interruption."""
    if lost_ranks or "failed" in endings:
        return "failed"
    if "interrupted" in endings:
        return "interrupted"
    return "finished"
