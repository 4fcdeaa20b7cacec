"""The kill-loss promise: a SIGKILLed rank loses nothing it logged more than one flush interval before."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.journal.store import LocalStore, list_runs
from coordinator.settings import DEFAULTS
from tests.faults.test_aggregator_faults import _wait_for
from tests.integration.test_processes import _reap, _spawn

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("workers_killwindow.py")
_SCHEDULING_S = 0.25
"""Allowance for the sender thread being scheduled late on a loaded (2-core, shared) machine."""


def _logged_by(progress: Path, t: float) -> int:
    """How many steps (0..k-1) the rank had logged at CLOCK_MONOTONIC time ``t``, from its progress lines."""
    k = 0
    for line in progress.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and float(parts[1]) <= t:
            k = int(parts[0]) + 1
    return k


def _start(
    store_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rate: float = 2000.0,
    *,
    flush: float | None = None,
    kill_window: float | None = None,
    world: int | None = None,
    no_step: bool = False,
    pair: bool = False,
    rings: bool = False,
) -> tuple[Path, list[subprocess.Popen[str]]]:
    """Two ranks of the kill-window worker (default: at the default flush interval), 1.5 s into logging.

    ``world``: the ranks claim a job of that size, at its automatic flush interval and kill window.
    ``no_step``: they log without steps (the sender numbers them as the loop counts); ``pair``: a second key
    ``pair`` beside ``m`` (-m) in each dict; ``rings``: ``Settings.rings`` (the rows go into each rank's ring).
    Returns the out directory and the processes.
    """
    monkeypatch.setattr("tests.integration.test_processes.WORKER", WORKER)
    out = tmp_path / "out"
    out.mkdir()
    flush = DEFAULTS.flush_interval(2) if flush is None else flush
    extra = [] if kill_window is None else ["--kill-window", str(kill_window)]
    extra += ["--flush", str(flush)] if world is None else ["--world", str(world)]
    extra += ["--no-step"] if no_step else []
    extra += ["--pair"] if pair else []
    extra += ["--rings"] if rings else []
    procs = _spawn(2, out, store_dir, "--rate", str(rate), *extra)
    _wait_for(out / "rank1.progress")
    time.sleep(1.5)
    return out, procs


def _kill_rank1(out: Path, procs: list[subprocess.Popen[str]]) -> float:
    """SIGKILL rank 1, tell rank 0, reap both (rank 0 closes clean, or failed for the lost rank); the kill's time."""
    t_kill = time.monotonic()
    procs[1].send_signal(signal.SIGKILL)
    (out / "killed").touch()
    res = _reap(procs, timeout=120)
    (out / "rank0.stderr").write_text(res[0][2])  # the aggregator's log, for a failure's message
    assert res[0][0] == 0 or "was closed as failed" in res[0][2], res[0][2][-3000:]
    return t_kill


def _rank1_steps(db: Path, out: Path | None = None) -> int:
    """How many steps of rank 1's series ``m`` are stored; each must be there once, in order, with its value.

    A gap's message has the run's events and the end of rank 0's (the aggregator's) log, from ``out``.
    """
    s = LocalStore(db, readonly=True)
    try:
        steps = [st for st, _ in s.values("m", 1)]
        assert len(steps) == len(set(steps)), "duplicated points"
        gaps = [(a, b) for a, b in itertools.pairwise(steps) if b != a + 1]
        assert steps[:1] in ([], [0]) and not gaps, (
            f"gaps (lost points) inside the series of {len(steps)} steps: {gaps[:10]} (first {steps[:1]}); "
            f"the run's events: {[e for e in s.events() if e[1] != 'run_started'][-20:]}; "
            f"the aggregator's log: {(out / 'rank0.stderr').read_text()[-3000:] if out else '(not kept)'}"
        )
        assert all(v == float(10_000_000 + st) for st, v in s.values("m", 1))
        pair = s.values("pair", 1)
        assert not pair or [(st, -v) for st, v in pair] == s.values("m", 1), "pair's points are not m's"
        return len(steps)
    finally:
        s.close()


@pytest.mark.parametrize("rate", [2000.0, 0.0], ids=["paced", "flat_out"])
def test_sigkilled_rank_loses_at_most_its_last_flush_interval(
    rate: float, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL rank 1 mid-run at the default flush interval: every step logged one interval before is stored once.

    Paced (2000 points a second) and flat out (``log()`` back to back: the sender's flushes are
    large and its GIL slices wait for the training thread; the last kept step was logged 20-45 ms
    before the kill in three runs)."""
    out, procs = _start(store_dir, tmp_path, monkeypatch, rate)
    flush = DEFAULTS.flush_interval(2)
    t_kill = _kill_rank1(out, procs)
    safe = _logged_by(out / "rank1.progress", t_kill - flush - _SCHEDULING_S)
    logged = _logged_by(out / "rank1.progress", t_kill + 1.0)
    assert safe > 1000  # the rank was well under way (at least 2000 points/s for 1.5 s)
    [info] = list_runs(store_dir)
    kept = _rank1_steps(info.path / "run.db", out)
    assert kept >= safe, f"lost steps {kept}..{safe - 1}, logged more than {flush * 1000:g} ms before the kill"
    assert kept <= logged + 10


_COPY_FLUSH_S = 1.0
_KILL_WINDOW_S = 0.05


def _kill_late_in_an_interval(
    store_dir: Path, out: Path, procs: list[subprocess.Popen[str]], flush: float, *, copies: bool = True
) -> tuple[int, int]:
    """SIGKILL rank 1 0.15-0.3 s before the ranks' next flush on the wall-clock grid; (steps kept, steps safe).

    Safe: logged more than the kill window plus the scheduling allowance before the kill. With
    copies every safe step must be kept (and none past what was logged).
    """
    while not flush - 0.3 < time.time() % flush < flush - 0.15:
        time.sleep(0.01)
    t_kill = _kill_rank1(out, procs)
    safe = _logged_by(out / "rank1.progress", t_kill - _KILL_WINDOW_S - _SCHEDULING_S)
    logged = _logged_by(out / "rank1.progress", t_kill + 1.0)
    assert safe > 1000
    [info] = list_runs(store_dir)
    kept = _rank1_steps(info.path / "run.db", out)
    if copies:
        assert kept >= safe, (
            f"lost steps {kept}..{safe - 1}, logged more than {_KILL_WINDOW_S * 1000:g} ms before the kill"
        )
        assert kept <= logged + 10
    return kept, safe


@pytest.mark.parametrize(
    ("rate", "copies", "no_step", "pair"),
    [
        (2000.0, True, False, False),
        (0.0, True, False, False),
        (2000.0, True, True, False),
        (2000.0, True, True, True),
        (2000.0, False, False, False),
    ],
    ids=["paced", "flat_out", "paced_steps_numbered", "paced_dicts_numbered", "paced_no_copies"],
)
@pytest.mark.usefixtures("socket_path")
def test_with_copies_a_sigkilled_rank_loses_at_most_its_kill_window_not_its_flush_interval(
    rate: float,
    copies: bool,
    no_step: bool,
    pair: bool,
    store_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kill_window_s=0.05`` with 1 s flushes: rank 1 is SIGKILLed 0.15-0.3 s before a flush, its uncut generation
    0.7-0.85 s (early enough that a test process descheduled for 0.1 s on a loaded machine still kills before it).

    The ranks flush on the wall clock's multiples of the interval (:mod:`coordinator.transport.cadence`),
    so the kill lands late in an interval. With copies every step logged more than the kill
    window (plus the scheduling allowance) before it is stored, once: paced, and flat out (where
    full batches are cut by volume between the copies). Without copies (the control, paced) the
    last ~0.9 s of steps are lost and the same check fails: the kill did land late in the interval. Logged
    without steps, the points the copies kept are numbered when recovered as the sender numbers them: each
    stored step's value is the one logged at it, alone or as a dict of two keys (a frame, numbered for both).
    """
    kill_window = _KILL_WINDOW_S if copies else None
    out, procs = _start(
        store_dir, tmp_path, monkeypatch, rate, flush=_COPY_FLUSH_S, kill_window=kill_window, no_step=no_step, pair=pair
    )
    kept, safe = _kill_late_in_an_interval(store_dir, out, procs, _COPY_FLUSH_S, copies=copies)
    if not copies:
        assert kept < safe, "the kill did not land late in a flush interval: the test shows nothing"


def test_a_large_jobs_sigkilled_rank_loses_at_most_50_ms_not_its_automatic_flush_interval(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks claiming a 4096-rank job, at the defaults: 1.6 s flushes (the aggregator's batch budget) and the
    default's 50 ms kill window, kept by copies. Rank 1 is SIGKILLed 0.15-0.3 s before a flush, its uncut
    generation 1.3-1.45 s old: every step logged more than 50 ms (plus the scheduling allowance) before is stored.

    Without the automatic kill window (copies off) the same kill loses the 1.3 s and the check fails.
    """
    world = 4096
    flush = DEFAULTS.flush_interval(world)
    assert flush == 1.6 and DEFAULTS.kill_window(world) == _KILL_WINDOW_S
    out, procs = _start(store_dir, tmp_path, monkeypatch, world=world)
    _kill_late_in_an_interval(store_dir, out, procs, flush, copies=True)


def _progress_lines(progress: Path) -> int:
    return len(progress.read_text().splitlines()) if progress.exists() else 0


@pytest.mark.parametrize("kind", ["log", "field", "text"])
def test_a_write_after_the_sender_dozed_is_sent_within_the_flush_interval(
    kind: str, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle sender dozes (no flush timer); the next write, of any kind, must still leave within the interval.

    Rank 1 writes once every 0.6 s (its sender dozes in between). The test waits for a write,
    lets one flush interval plus the scheduling allowance pass, and SIGKILLs the rank before its
    next write: that write must be stored. A sender that only woke for its 1 s heartbeat would
    lose it.
    """
    monkeypatch.setattr("tests.integration.test_processes.WORKER", WORKER)
    out = tmp_path / "out"
    out.mkdir()
    procs = _spawn(2, out, store_dir, "--flush", str(DEFAULTS.flush_interval(2)), "--doze", kind)
    progress = out / "rank1.progress"
    deadline = time.monotonic() + 60
    while _progress_lines(progress) < 4:  # a few doze cycles behind it
        assert time.monotonic() < deadline, "rank 1 never got going"
        time.sleep(0.02)
    n = _progress_lines(progress)
    while _progress_lines(progress) == n:  # the next write has just been made
        assert time.monotonic() < deadline, "rank 1 stopped writing"
        time.sleep(0.005)
    time.sleep(DEFAULTS.flush_interval(2) + _SCHEDULING_S)
    procs[1].send_signal(signal.SIGKILL)
    (out / "killed").touch()
    res = _reap(procs, timeout=120)
    assert res[0][0] == 0 or "was closed as failed" in res[0][2], res[0][2][-3000:]
    last = _progress_lines(progress) - 1  # the last write rank 1 made (it sleeps 0.6 s after each)
    assert last >= n
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        if kind == "log":
            assert [st for st, _ in s.values("m", 1)] == list(range(last + 1))
        elif kind == "field":
            assert s.field("doze/r1") == ("int", last)
        else:
            assert s.texts("doze/note", 1) == [(st, f"t{st}") for st in range(last + 1)]
    finally:
        s.close()
