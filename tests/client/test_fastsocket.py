"""The socket path's common case in one C call (``_fastrow.Log`` with no ring that is read: ``client/rowpath.py``).

A run whose calls go over the socket (``rings=False``, or a ring the aggregator does not read: a rank on another
machine) has the extension's ``Log`` objects in its ``__dict__`` too: a point of a key whose column is made goes
into it, a dict's row into its key tuple's frame of this generation, in C, below the buffer's mark. Here the same
calls, good and bad, go through a run with them and one without (``COORDINATOR_PUREPYTHON=1``): every answer and
stored point must be the same; the C call must take the common case (its Python method called only for the
rest), and hand a full buffer to the method (which wakes the sender and waits). Threads logging at once over the
socket: ``test_fastcalls``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client import rowpath
from coordinator.client.hotpath import PLAIN
from coordinator.client.run import Run
from tests.client.test_fastcalls import _answer, _calls, _start, _stored

pytestmark = pytest.mark.usefixtures("store_dir")
needs_c = pytest.mark.skipif(not rowpath.built(), reason="the C extension was not built (no compiler at install)")


class _Counted:
    """A run's method, counting the calls the C path hands it."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.method(*args, **kwargs)


def _counted(run: Run) -> tuple[_Counted, _Counted]:
    """New ``Log`` objects over counting methods in ``run``'s ``__dict__``, as ``rowpath.fast_calls`` makes them."""
    from coordinator.client._fastrow import Log

    plain = tuple(PLAIN - {float, int, bool})
    rows = None if run._ring is None else run._ring.row.__self__  # the ring's C rows: it decides first
    log, append = _Counted(Run.log.__get__(run)), _Counted(Run._append.__get__(run))
    vars(run)["log"] = Log(run, run._ring, rows, run._buf.lock, log, False, run._buf, plain)
    vars(run)["_append"] = Log(run, run._ring, rows, run._buf.lock, append, True, run._buf, plain)
    return log, append


@needs_c
@pytest.mark.usefixtures("socket_path")
def test_a_run_over_the_socket_takes_its_common_calls_in_c(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a call that makes a column or a frame (the first of a key or key tuple, and each first after a cut whose
    frame the cutter did not keep) reaches the Python method; the points of all 3,000 calls are stored once."""
    with _start("socket-c", False, monkeypatch) as run:
        assert run._ring is None and type(vars(run)["log"]).__name__ == "Log"
        log, append = _counted(run)
        for s in range(1_000):
            run.log({"loss": s * 0.5}, step=s)
            run.log({"a": float(s), "b": s, "c": bool(s & 1)}, step=s)
            run["h"].append(float(s))
        assert log.calls < 100 and append.calls < 50, (log.calls, append.calls)
        run.wait(60)
    got = _stored(store_dir, "socket-c")
    assert got["loss"] == [(s, s * 0.5) for s in range(1_000)]
    assert got["a"] == [(s, float(s)) for s in range(1_000)] and got["b"] == got["a"]
    assert got["c"] == [(s, float(s & 1)) for s in range(1_000)]
    assert got["h"] == [(s, float(s)) for s in range(1_000)]  # numbered by the sender, as without the C call


@needs_c
@pytest.mark.usefixtures("socket_path")
def test_the_c_call_over_the_socket_answers_and_stores_what_the_methods_do(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers, stored = [], []
    for pure in (False, True):
        name = f"fast-parity-sock{int(pure)}"  # the answers leave out the name (_answer)
        run = _start(name, pure, monkeypatch)
        assert ("log" in vars(run)) is not pure and run._ring is None
        with run:
            answers.append(_calls(run))
            run.wait(60)
        answers[-1].append(_answer(run.log, {"loss": 1.0}, step=800))  # a stopped run
        answers[-1].append(_answer(run["h"].append, 1.0, step=800))
        stored.append(_stored(store_dir, name))
    assert answers[0] == answers[1]
    assert sum(a != "ok" for a in answers[0]) == 19, [a for a in answers[0] if a != "ok"]
    assert stored[0] == stored[1]
    assert stored[0]["h"][:3] == [(0, 0.0), (1, 1.0), (2, 2.0)] and len(stored[0]["loss"]) == 600


@needs_c
@pytest.mark.usefixtures("ring_path")
def test_a_rank_whose_ring_is_not_read_takes_the_socket_path_in_c(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank on another machine than its aggregator (here its boot id says so) has its ring let go: its calls go
    over the socket, in C, each point stored once."""
    monkeypatch.setattr("coordinator.client.ringlog.boot_id", lambda: "another-machine")
    with _start("socket-remote", False, monkeypatch) as run:
        assert run._ring is not None and not run._ring.on
        log, append = _counted(run)
        for s in range(500):
            run.log({"a": float(s), "b": s}, step=s)
            run["c"].append(float(s), step=s)
        assert log.calls < 50 and append.calls < 50, (log.calls, append.calls)
        assert run.stats()["ring_points"] == 0
        run.wait(60)
    got = _stored(store_dir, "socket-remote")
    for k in "abc":
        assert got[k] == [(s, float(s)) for s in range(500)], k


@needs_c
@pytest.mark.usefixtures("socket_path")
def test_a_full_buffer_hands_the_call_to_the_method_which_waits_for_room(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer of 500 points: 20,000 calls flat out reach its mark again and again; each call at the mark goes to
    the method (which wakes the sender, and waits while the buffer is full), and every point is stored once."""
    monkeypatch.delenv(rowpath.PURE_ENV, raising=False)
    settings = coordinator.Settings(rank=0, world_size=1, max_buffer_points=500, backpressure="block")
    with coordinator.init_run(name="socket-full", settings=settings) as run:
        log, _ = _counted(run)
        for s in range(20_000):
            run.log({"x": float(s)}, step=s)
        assert 40 <= log.calls < 20_000, log.calls  # at least once each time the 500 points filled
        run.wait(60)
        assert run._buf.pending == 0
    assert _stored(store_dir, "socket-full")["x"] == [(s, float(s)) for s in range(20_000)]
