"""How a rank's process ends is how the run ends (issue 11, item 13), and SIGTERM ends a worker blocked in C (15).

Each test runs one real rank (with its aggregator) in a child process that ends in one way, then
reads the stored run: its state, the failed/interrupted ranks and reasons of the final report,
and the points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.journal.store import LocalStore, list_runs
from tests.sigint import with_default_sigint

_WORKER = Path(__file__).parent / "workers" / "ending_rank.py"


def _start(how: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]), RANK="0", WORLD_SIZE="1")
    p = subprocess.Popen(
        with_default_sigint([sys.executable, str(_WORKER), "--how", how, *args]),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline()  # bounded: the worker prints ready or exits (EOF)
    if line.strip() != "ready":
        p.kill()
        _, err = p.communicate(30)
        pytest.fail(f"worker did not get ready: {line!r}\n{err[-3000:]}")
    return p


def _stored(store_dir: Path) -> tuple[str, dict[str, Any], list[tuple[int, float]]]:
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        ri = s.run_info()
        assert ri.report is not None, "the run was not finished"
        return ri.state, ri.report, s.values("x", 0)
    finally:
        s.close()


def _finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(30)
        pytest.fail(f"worker still running {timeout} s later")
    return p.returncode, err


def test_uncaught_exception_outside_a_with_block_fails_the_run_with_its_type_and_message(store_dir: Path) -> None:
    rc, err = _finish(_start("raise"))
    assert rc == 1, err[-2000:]
    state, report, pts = _stored(store_dir)
    assert state == "failed"
    assert report["failed_ranks"] == {"0": "ValueError: boom at step 99"}
    assert len(pts) == 100


def test_uncaught_exception_in_a_thread_fails_the_run(store_dir: Path) -> None:
    rc, err = _finish(_start("thread"))
    # The main thread goes on and stops the run; on rank 0 stop() then says the run closed as failed.
    assert rc == 1 and "DeliveryError" in err and "closed as failed" in err, err[-2000:]
    state, report, _ = _stored(store_dir)
    assert state == "failed"
    assert "ZeroDivisionError" in report["failed_ranks"]["0"] and "loader" in report["failed_ranks"]["0"]


def test_keyboard_interrupt_outside_a_with_block_interrupts_the_run(store_dir: Path) -> None:
    rc, err = _finish(_start("keyboard"))
    assert rc != 0, err[-2000:]
    state, report, pts = _stored(store_dir)
    assert state == "interrupted"
    assert list(report["interrupted_ranks"]) == ["0"] and not report["failed_ranks"]
    assert len(pts) == 100


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.1])
def test_ctrl_c_in_a_hot_logging_loop_interrupts_the_run_with_every_point_paired(
    store_dir: Path, after_s: float
) -> None:
    """A real SIGINT to a rank logging as fast as it can: the KeyboardInterrupt lands inside log()
    or append() at times. The run ends interrupted, and what was stored is each key's steps from its
    first on, without a gap, each value its own step."""
    p = _start("hot")
    time.sleep(after_s)
    p.send_signal(signal.SIGINT)
    rc, err = _finish(p)
    assert rc != 0 and "KeyboardInterrupt" in err, err[-2000:]
    state, report, _ = _stored(store_dir)
    assert state == "interrupted", report
    [info] = list_runs(store_dir)
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        series = {k: s.values(k, 0) for k in ("x", "y", "z")}
    finally:
        s.close()
    for k, pts in series.items():
        first = 0 if k == "x" else 100  # x's first 100 points came before the loop
        assert [st for st, _ in pts] == list(range(first, first + len(pts))), f"{k}: steps with a gap or out of order"
        assert all(v == st for st, v in pts), f"{k}: a value stored with another step"
    n = len(series["y"])
    assert n > 0 and len(series["x"]) == 100 + n  # a dict's row: whole or not at all
    assert n - 1 <= len(series["z"]) <= n


def test_a_large_batch_left_for_the_exit_is_sent_after_pyzmqs_own_exit_hook(store_dir: Path) -> None:
    """A rank that sent large (zero-copy) batches and exits without stop(): the run's atexit hook
    sends the last one. pyzmq stops the garbage collector of zero-copy sends in an atexit hook of
    its own, registered when its first such send imports it, after the run's; run first, it made
    the last send raise (``zmq gc socket requested during shutdown``), and the sender thread died
    with the batch."""
    rc, err = _finish(_start("burst-exit"))
    assert rc == 0, err[-2000:]
    assert "zmq gc socket" not in err and "sender thread crashed" not in err, err[-2000:]
    state, report, pts = _stored(store_dir)
    assert state == "finished", report
    assert [s for s, _ in pts] == list(range(100_100))


def test_clean_end_finishes_the_run(store_dir: Path) -> None:
    rc, err = _finish(_start("clean"))
    assert rc == 0, err[-2000:]
    state, report, _ = _stored(store_dir)
    assert state == "finished" and not report["failed_ranks"] and not report["interrupted_ranks"]


def test_sigterm_in_python_code_interrupts_the_run(store_dir: Path) -> None:
    p = _start("sleep")
    p.send_signal(signal.SIGTERM)
    rc, err = _finish(p)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    state, report, pts = _stored(store_dir)
    assert state == "interrupted", report
    assert list(report["interrupted_ranks"]) == ["0"]
    assert len(pts) == 100


def test_sigterm_ends_a_worker_blocked_in_a_c_call_within_close_timeout(store_dir: Path) -> None:
    """The main thread never returns to the interpreter, so Python's SIGTERM handler never runs:
    the watchdog thread stops the run (points delivered, ending interrupted) and exits 143."""
    close_timeout = 15.0
    p = _start("blocked", "--close-timeout", str(close_timeout))
    time.sleep(0.5)  # let it block in the C call
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc, err = _finish(p, timeout=close_timeout + 30)
    took = time.monotonic() - t0
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert took < close_timeout + 5, f"took {took:.1f} s"
    assert "unreachable" not in err
    state, report, pts = _stored(store_dir)
    assert state == "interrupted", report
    assert "blocked" in report["interrupted_ranks"]["0"]
    assert [s for s, _ in pts] == list(range(100))


def test_sigterm_to_a_forked_child_does_not_end_the_rank(store_dir: Path) -> None:
    """A DataLoader worker shares the watchdog's pipe after fork; terminating it must not stop the parent."""
    rc, err = _finish(_start("forked-sigterm"))
    assert rc == 0, err[-2000:]
    state, _, pts = _stored(store_dir)
    assert state == "finished"
    assert len(pts) == 101
