"""How a run ends: stop(), an exception in ``with``, a forked child."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import coordinator
from tests.client.helpers import open_store


def test_log_after_stop_raises_and_stop_is_idempotent(store_dir: Path) -> None:
    """A stopped run rejects calls with ClosedError; stop() twice is fine."""
    run = coordinator.init_run()
    run.log({"a": 1.0}, step=0)
    run.stop()
    run.stop()
    with pytest.raises(coordinator.ClosedError):
        run.log({"a": 1.0}, step=1)
    with pytest.raises(coordinator.ClosedError):
        run["f"] = 1


def test_exception_inside_with_still_stores_and_leaves_nothing_running(store_dir: Path) -> None:
    """The user's exception propagates; the run is closed, its data stored; no thread or process remains."""
    with pytest.raises(RuntimeError, match="boom"), coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise RuntimeError("boom")
    assert not [t for t in threading.enumerate() if t.name.startswith("coordinator")]
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(0, 1.0)]
    finally:
        s.close()


def _answer_of_child(child: Callable[[], bytes], *, on: int | None = None) -> str:
    """Fork; the child runs ``child`` and writes what it returns (or its ClosedError) to a pipe.

    The child answers through a raw pipe and leaves with os._exit: no multiprocessing queue (its
    feeder thread and locks) between the fork and the answer. ``on``: the fd number the pipe's
    write end is moved to before the fork.
    """
    r, w = os.pipe()
    if on is not None:
        os.dup2(w, on)
        os.close(w)
        w = on
    pid = os.fork()
    if pid == 0:
        try:
            try:
                os.write(w, child())
            except coordinator.ClosedError as e:
                os.write(w, str(e).encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready, "the forked child did not answer within 30 s"
        return os.read(r, 4096).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_log_in_a_forked_child_raises_clearly_and_the_parent_is_unaffected(store_dir: Path) -> None:
    """A DataLoader-style fork: the child's log() raises ClosedError naming the fork; the parent keeps logging."""
    with coordinator.init_run() as run:
        run.log({"a": 0.0}, step=0)

        def child() -> bytes:
            run.log({"a": 1.0}, step=1)
            return b"no error"

        assert "forked child" in _answer_of_child(child)
        run.log({"a": 2.0}, step=2)
        run.wait(30)
        assert run["a"].fetch_values(rank=0) == [(0, 0.0), (2, 2.0)]


def test_a_fork_after_a_run_stopped_leaves_the_childs_descriptors_alone(store_dir: Path) -> None:
    """A stopped run's SIGTERM watchdog closed its pipe; the fd numbers it freed are reused (here by
    the test's pipe). A later fork must not close them again in the child: the child's own pipe
    keeps working."""
    first = coordinator.init_run()
    watchdog = first._life._watchdog
    assert watchdog is not None, "the run installs its SIGTERM watchdog on the main thread"
    first.stop()
    # the number the watchdog freed, taken again (as any later open may)
    assert _answer_of_child(lambda: b"alive", on=watchdog._r) == "alive"
    del first
