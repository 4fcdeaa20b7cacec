"""The kill-loss bound when the aggregator dies first: a rank's batches then live in its memory until written ahead.

A batch sent to the aggregator is written to the rank's spool only once it is unacknowledged past
the ack deadline (``ack_deadline``: 200 ms at the default 50 ms flush). Killing the aggregator
loses what it had received but not committed; a rank SIGKILLed shortly after loses what was only in
its memory: nothing logged more than one flush interval plus the ack deadline before its kill.
With ``kill_window_s`` every cut is written ahead before it is sent: then nothing logged more than
the kill window before.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.journal.store import RunInfo, list_runs
from coordinator.settings import DEFAULTS
from coordinator.transport.pipeline import ack_deadline
from tests.faults.test_kill_window import (
    _COPY_FLUSH_S,
    _KILL_WINDOW_S,
    _SCHEDULING_S,
    _logged_by,
    _rank1_steps,
    _start,
)
from tests.integration.test_processes import _aggregators, _reap

pytestmark = pytest.mark.integration


def _double_fault(
    store_dir: Path, out: Path, procs: list[subprocess.Popen[str]], aggregator: str
) -> tuple[RunInfo, float]:
    """SIGKILL the aggregator (it is restarted) or freeze it, then 0.5 s later SIGKILL rank 1 (and a frozen
    aggregator: what it had received and not committed is gone with it); reap. The run and the rank's kill time."""
    [info] = list_runs(store_dir)
    [agg] = _aggregators(info.id)
    if aggregator == "killed":
        agg.send_signal(signal.SIGKILL)
    else:
        agg.suspend()
    time.sleep(0.5)
    t_kill = time.monotonic()
    procs[1].send_signal(signal.SIGKILL)
    if aggregator == "frozen":
        agg.send_signal(signal.SIGKILL)
    (out / "killed").touch()
    res = _reap(procs, timeout=120)
    assert res[0][0] == 0 or "was closed as failed" in res[0][2], res[0][2][-3000:]
    return info, t_kill


@pytest.mark.parametrize("aggregator", ["killed", "frozen"])
def test_rank_sigkilled_after_the_aggregator_loses_at_most_a_flush_interval_and_the_ack_deadline(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregator: str
) -> None:
    """The aggregator is SIGKILLed (restarted) or frozen (then SIGKILLed), rank 1 SIGKILLed 0.5 s later.

    Frozen, nothing acks rank 1's batches and nothing tells it to write them: the ack deadline does.
    Every step logged before the bound is stored once (the restarted aggregator replays the spool).
    """
    out, procs = _start(store_dir, tmp_path, monkeypatch)
    info, t_kill = _double_fault(store_dir, out, procs, aggregator)
    flush = DEFAULTS.flush_interval(2)
    bound = flush + ack_deadline(flush)
    safe = _logged_by(out / "rank1.progress", t_kill - bound - _SCHEDULING_S)
    assert safe > 1000  # the rank was well under way (2000 points/s for 1.5 s)
    kept = _rank1_steps(info.path / "run.db")
    assert kept >= safe, f"lost steps {kept}..{safe - 1}, logged more than {bound * 1000:g} ms before"


@pytest.mark.parametrize("aggregator", ["killed", "frozen"])
def test_with_copies_a_rank_sigkilled_after_the_aggregator_loses_at_most_its_kill_window(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregator: str
) -> None:
    """``kill_window_s=0.05`` with 1 s flushes (ack deadline 1 s): every cut is on disk before it is sent.

    The aggregator is SIGKILLed (restarted) or frozen (then SIGKILLed), rank 1 SIGKILLed 0.5 s
    later: every step logged more than the kill window (plus the scheduling allowance) before is
    stored once, from the spool and the copies. Without copies the last second (the ack deadline)
    would be lost.
    """
    out, procs = _start(store_dir, tmp_path, monkeypatch, flush=_COPY_FLUSH_S, kill_window=_KILL_WINDOW_S)
    info, t_kill = _double_fault(store_dir, out, procs, aggregator)
    safe = _logged_by(out / "rank1.progress", t_kill - _KILL_WINDOW_S - _SCHEDULING_S)
    assert safe > 1000
    kept = _rank1_steps(info.path / "run.db")
    assert kept >= safe, f"lost steps {kept}..{safe - 1}, logged more than {_KILL_WINDOW_S * 1000:g} ms before"
