"""``log()`` and ``append()`` in one C call (``_fastrow.Log``, ``_fastrow.Method``: :mod:`coordinator.client.rowpath`).

With the extension and a ring, a run's ``log`` and ``_append`` are ``Log`` objects in its ``__dict__``, and
``Handle.append`` and ``Run.__getitem__`` are ``Method`` objects in their classes (``append`` through the run's
``Log``): they take the ring's common case, the buffer's lock taken without blocking, and hand every other call
to the methods. Here the same calls, good and bad, go through a run with them and one without
(``COORDINATOR_PUREPYTHON=1``): every answer and every stored point must be the same, a call that finds the
lock held must wait for it, threads logging at once must each store every point once, and an error inside the
C call must leave the lock free.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coordinator
from coordinator.client import rowpath
from coordinator.client.handle import Handle
from coordinator.client.run import Run
from coordinator.journal.store import LocalStore, list_runs
from tests.untyped import bad

pytestmark = [pytest.mark.usefixtures("ring_path", "store_dir")]  # each run in the test's own store
needs_c = pytest.mark.skipif(not rowpath.built(), reason="the C extension was not built (no compiler at install)")


class _Data(dict[str, Any]):
    """A dict subclass: the C call hands it to ``Run.log``."""


class _Text(str):
    """A str subclass: not a text for ``Handle.append`` (its class is not ``str``), nor a number."""


def _start(name: str, pure: bool, monkeypatch: pytest.MonkeyPatch) -> Run:
    if pure:
        monkeypatch.setenv(rowpath.PURE_ENV, "1")
    else:
        monkeypatch.delenv(rowpath.PURE_ENV, raising=False)
    return coordinator.init_run(name=name, settings=coordinator.Settings(rank=0, world_size=1))


def _stored(store_dir: Path, name: str) -> dict[str, list[tuple[int, float]]]:
    [info] = [i for i in list_runs(store_dir) if i.name == name]
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        return {str(s["key"]): st.values(str(s["key"])) for s in st.series_summary()}
    finally:
        st.close()


def _answer(call: Any, *args: Any, **kwargs: Any) -> str:
    try:
        call(*args, **kwargs)
    except Exception as e:  # the answer compared: its type and message (the run's id, which differs, left out)
        return re.sub(r"fast-parity-\w+-[0-9a-f]+", "<run>", f"{type(e).__name__}: {e}")
    return "ok"


def _calls(run: Run) -> list[str]:
    """Every kind of call the C path takes, and of those it hands on: its answers, in order."""
    out = []
    for s in range(600):  # past 256 rows: the marks' confirmed() and fill look run inside the C call
        out.append(_answer(run.log, {"loss": s * 0.5}, step=s))
        out.append(_answer(run.log, {"a": s, "b": bool(s & 1), "c": np.float32(s / 4)}, s))
        out.append(_answer(run["h"].append, float(s), step=s))
        out.append(_answer(run["h"].append, np.int64(s), s + 1_000))
        if s % 50 == 0:
            out.append(_answer(run.log, {"again": 1.0}, step=s, policy=None))
            out.append(_answer(run.log, _Data(sub=float(s)), step=s))
            out.append(_answer(run.log, {"nostep": float(s)}))
            out.append(_answer(run["auto"].append, float(s)))
            out.append(_answer(run.log, {"p": float(s)}, step=s, policy="max"))
            out.append(_answer(run["h"].append, float(s), step=s + 2_000, policy=None))
            out.append(_answer(run["q"].append, float(s), s, policy="min"))
            out.append(_answer(run["text"].append, f"line {s}", step=s))
            out.append(_answer(run["h"].append, value=float(s), step=s + 3_000))
            out.append(_answer(run["flag"].append, bool(s & 2), step=s))
    out.append(_answer(run.log, {"loss": "x"}, step=700))
    out.append(_answer(run.log, {"loss": 1.0}, step=-1))
    out.append(_answer(run.log, {"loss": 1.0}, step=2**63))
    out.append(_answer(run.log, {"loss": 1.0}, step=bad(True)))
    out.append(_answer(run.log, {"loss": 1.0}, 1, step=2))
    out.append(_answer(run.log, {"loss": 1.0}, 1, **{"policy": "bogus"}))
    out.append(_answer(run.log, {"loss": 1.0}, 1, **bad({"nope": 3})))
    out.append(_answer(run.log, bad({1: 1.0}), step=701))
    out.append(_answer(run.log, bad([("loss", 1.0)]), step=702))
    out.append(_answer(run["h"].append, None, step=703))
    out.append(_answer(run["h"].append, 2**2000, step=704))
    out.append(_answer(run["h"].append, 1.0, step=bad(1.5)))
    out.append(_answer(run["h"].append, "text", step=705))
    out.append(_answer(run["h"].append, _Text("1.0"), step=706))
    out.append(_answer(run["h"].append, 1.0, 707, 708))
    out.append(_answer(run["h"].append, 1.0, step=708, policy="max"))
    out.append(_answer(run["text"].append, 1.0, step=709))
    return out


@needs_c
def test_a_run_with_rings_logs_and_appends_through_the_c_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with _start("fast-types", False, monkeypatch) as run:
        assert type(run.log).__name__ == "Log" and type(run._append).__name__ == "Log"
        assert inspect.signature(run.log) == inspect.signature(Run.log.__get__(run))
        assert run.log.__doc__ == Run.log.__doc__
        h = run["k"]
        assert run["k"] is h and run.__getitem__("k") is h and Run.__getitem__(run, "k") is h

        class Sub(Handle):
            __slots__ = ()

        before = run.stats()["ring_points"]
        h.append(1.0, step=0)
        Handle.append(h, 2.0, 1)
        h.append(3.0, step=2, policy=None)
        Sub(run, "k").append(4.0, step=3)  # the same slots, found again for the subclass
        assert run.stats()["ring_points"] == before + 4
    with _start("fast-types-pure", True, monkeypatch) as run:
        assert "log" not in vars(run) and "_append" not in vars(run)


@needs_c
def test_a_method_a_subclass_overrides_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rowpath.PURE_ENV, raising=False)

    class Counted(Run):
        def log(self, data: Any, step: int | None = None, *, policy: str | None = None) -> None:
            super().log(data, step, policy=policy)

    with _start("fast-sub", False, monkeypatch) as run:
        assert run._ring is not None
        run.__class__ = Counted  # as if made so: fast_calls reads the type
        calls = rowpath.fast_calls(run, Run, run._ring, run._buf)
        run.__class__ = Run
    assert sorted(calls) == ["_append"]


@needs_c
@pytest.mark.skipif(os.environ.get(rowpath.PURE_ENV) == "1", reason="COORDINATOR_PUREPYTHON=1 at import: the functions")
def test_the_handle_methods_stand_in_their_classes() -> None:
    """``Handle.append`` and ``Run.__getitem__`` are the extension's ``Method`` over the functions: bound when read
    from an instance, with the functions' names, texts and signatures; a bad ``Method`` is refused."""
    from coordinator.client._fastrow import Method

    for cls, name in ((Handle, "append"), (Run, "__getitem__")):
        m = vars(cls)[name]
        assert type(m) is Method and m.__name__ == name and m.__qualname__ == f"{cls.__name__}.{name}"
        assert m.__doc__ == m.__wrapped__.__doc__ and m.__module__ == cls.__module__
        assert inspect.signature(m) == inspect.signature(m.__wrapped__)
    h = Handle(bad(None), "k")
    assert h.append.__self__ is h and inspect.signature(h.append) == inspect.signature(
        Handle.append.__wrapped__.__get__(h)
    )
    with pytest.raises(AttributeError):  # not a run: the function says so
        h.append(1.0, step=0)
    with pytest.raises(ValueError, match="not 'item' or 'append'"):
        Method("row", print)
    with pytest.raises(TypeError, match="takes a function"):
        Method("item", 3)
    with pytest.raises(TypeError, match="not initialised"):
        Method.__new__(Method)(1, 2)


@needs_c
def test_the_c_call_answers_and_stores_what_the_methods_do(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers, stored = [], []
    for pure in (False, True):
        name = f"fast-parity-{pure}"
        run = _start(name, pure, monkeypatch)
        assert ("log" in vars(run)) is not pure
        with run:
            answers.append(_calls(run))
            ring_points = run.stats()["ring_points"]
            run.wait(60)
        answers[-1].append(_answer(run.log, {"loss": 1.0}, step=800))  # a stopped run
        answers[-1].append(_answer(run["h"].append, 1.0, step=800))
        stored.append(_stored(store_dir, name))
        assert ring_points > 2_000, ring_points  # the ring took the common case on both paths
    assert answers[0] == answers[1]
    assert "ok" in answers[0] and sum(a != "ok" for a in answers[0]) == 19, [a for a in answers[0] if a != "ok"]
    assert stored[0] == stored[1]
    assert stored[0]["h"][:3] == [(0, 0.0), (1, 1.0), (2, 2.0)] and len(stored[0]["loss"]) == 600


@needs_c
def test_a_call_that_finds_the_lock_held_waits_for_it(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C call takes the lock without blocking; held by another thread, the call goes to the method, which
    waits, then logs."""
    with _start("fast-held", False, monkeypatch) as run:
        taken, done = threading.Event(), threading.Event()

        def hold() -> None:
            with run._buf.lock:
                taken.set()
                done.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        try:
            assert taken.wait(10)
            logged = threading.Thread(target=lambda: run["x"].append(1.0, step=0))
            logged.start()
            logged.join(0.3)
            assert logged.is_alive()  # waiting for the lock, not past it
        finally:
            done.set()
            t.join(10)
        logged.join(10)
        assert not logged.is_alive()
        run.wait(30)
    assert _stored(store_dir, "fast-held")["x"] == [(0, 1.0)]


@needs_c
@pytest.mark.parametrize("rings", ["1", "0"], ids=["ring", "socket"])
def test_threads_logging_at_once_store_every_point_once(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, rings: str
) -> None:
    """Through the ring's C call, and over the socket through the socket path's (client/rowpath.py)."""
    monkeypatch.setenv("COORDINATOR_RINGS", rings)
    n = 3_000
    with _start("fast-threads", False, monkeypatch) as run:

        def work(t: int) -> None:
            for s in range(n):
                if s & 1:
                    run.log({f"t{t}": float(s), "shared": float(t)}, step=s)
                else:
                    run[f"t{t}"].append(float(s), step=s)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert (run.stats().get("ring_points", 0) > 0) is (rings == "1")  # no ring: no ring counters
        run.wait(60)
    got = _stored(store_dir, "fast-threads")
    for t in range(4):
        assert got[f"t{t}"] == [(s, float(s)) for s in range(n)]


@needs_c
def test_an_error_inside_the_c_call_leaves_the_lock_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 256th row's fill look runs inside the C call; its error is the call's, and the lock is released."""
    with _start("fast-error", False, monkeypatch) as run:
        assert run._ring is not None
        run.log({"x": 0.0}, step=0)  # the frame, through the method

        def boom() -> None:
            raise RuntimeError("the fill look failed")

        monkeypatch.setattr(run._ring, "_look_at_fill", boom)
        with pytest.raises(RuntimeError, match="the fill look failed"):
            for s in range(1, 600):
                run.log({"x": float(s)}, step=s)
        assert not run._buf.lock.locked()
        monkeypatch.delattr(run._ring, "_look_at_fill")  # the method again
        run.log({"x": 1_000.0}, step=1_000)
        run.wait(30)


@needs_c
def test_a_log_not_initialised_refuses_calls() -> None:
    from coordinator.client._fastrow import Log

    with pytest.raises(TypeError, match="not initialised"):
        Log.__new__(Log)({"x": 1.0}, 0)
