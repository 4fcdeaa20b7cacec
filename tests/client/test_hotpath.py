"""The hot path's frames: a dict of plain numbers at a step is one frame row; a key lives in one place per generation.

Each test logs within one generation (a 60 s flush interval: only ``wait()`` cuts) and reads the
rank's own points back from the journal in the order they were stored.
"""

from __future__ import annotations

import dataclasses
import dis
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coordinator
from coordinator import Settings
from coordinator.client.run import Run
from tests.client.helpers import open_store

ONE_GENERATION = Settings(flush_interval_s=60.0)


def stored(store_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Rank 0's points per key, in journal order (every chunk, not deduplicated by step)."""
    s = open_store(store_dir)
    try:
        out: dict[str, list[tuple[int, float]]] = {}
        for c in s.chunks_after(0, 1 << 30):
            if c.rank == 0:
                out.setdefault(c.key, []).extend(zip(c.steps, c.values, strict=True))
        return out
    finally:
        s.close()


def frames_of(run: Run) -> dict[tuple[str, ...], int]:
    """The run's frames of this generation: key tuple -> rows."""
    with run._buf.lock:
        assert set(run._buf.framed) == {k for f in run._buf.frames for k in f}
        assert run._buf.framed.keys().isdisjoint(k for k, (s, _) in run._buf.cols.items() if s)
        return {k: len(f.steps) for k, f in run._buf.frames.items()}


@pytest.mark.usefixtures("socket_path")
def test_interleaved_dicts_appends_tensors_and_steps_none_keep_each_keys_call_order(store_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": 1.0, "b": 2.0}, step=0)
        assert frames_of(run) == {("a", "b"): 1}
        run.log({"a": 1.5, "b": 2.5}, step=1)
        run["a"].append(3.0, step=0)  # a per-key append of a framed key: the frame spills first
        assert frames_of(run) == {}
        run.log({"a": 1.75, "b": 2.75}, step=2)  # per key now: after the append
        run.log({"b": 4.0, "a": 5.0}, step=1)  # per key: both have points in columns
        run.log({"c": 6.0, "d": 7.0}, step=1)
        run.log({"c": torch.tensor(8.0), "d": 9.0}, step=2)  # a tensor: a row of the frame too, read at the cut
        run.log({"e": 1.0, "f": 2.0}, step=3)
        run.log({"e": 3.0, "f": 4.0})  # step None: a row of the same frame, numbered after its points
        run.log({"g": 1.0, "h": 2.0}, step=5)
        run.log({"h": 2.5}, step=6)  # one key: per key
        run.log({"i": 1.0, "j": 2.0}, step=0)
        run.log({"j": 3.0, "i": 4.0}, step=1)  # another key tuple of framed keys: per key
        run.log({"k": 1.0, "l": 2.0}, step=0)
        run.log({"k": 3.0, "l": np.float16(4.0)}, step=1)  # a type frames do not take: per key
        run.log({"m": 1.0, "n": 2.0}, step=7)
        assert frames_of(run) == {("c", "d"): 2, ("e", "f"): 2, ("m", "n"): 1}
        run.wait(30)
    got = stored(store_dir)
    assert got == {
        "a": [(0, 1.0), (1, 1.5), (0, 3.0), (2, 1.75), (1, 5.0)],
        "b": [(0, 2.0), (1, 2.5), (2, 2.75), (1, 4.0)],
        "c": [(1, 6.0), (2, 8.0)],
        "d": [(1, 7.0), (2, 9.0)],
        "e": [(3, 1.0), (4, 3.0)],
        "f": [(3, 2.0), (4, 4.0)],
        "g": [(5, 1.0)],
        "h": [(5, 2.0), (6, 2.5)],
        "i": [(0, 1.0), (1, 4.0)],
        "j": [(0, 2.0), (1, 3.0)],
        "k": [(0, 1.0), (1, 3.0)],
        "l": [(0, 2.0), (1, 4.0)],
        "m": [(7, 1.0)],
        "n": [(7, 2.0)],
    }


@pytest.mark.usefixtures("socket_path")
def test_plain_bools_and_ints_are_framed_as_floats_and_steps_none_continue_after_a_frame(store_dir: Path) -> None:
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": True, "b": 3, "c": 0.5}, step=4)
        run.log({"a": False, "b": -2, "c": 1.5}, step=9)
        assert frames_of(run) == {("a", "b", "c"): 2}
        run.wait(30)
        run.log({"a": 7.0})  # the next generation, no step: after the frame's last step
        run["b"].append(8.0)
    assert stored(store_dir) == {
        "a": [(4, 1.0), (9, 0.0), (10, 7.0)],
        "b": [(4, 3.0), (9, -2.0), (10, 8.0)],
        "c": [(4, 0.5), (9, 1.5)],
    }


@pytest.mark.usefixtures("socket_path")  # with a ring, these dicts are its rows (tests/client/test_ringsteps.py)
def test_dicts_logged_without_a_step_are_framed_and_each_key_numbered_as_if_logged_alone(store_dir: Path) -> None:
    """A dict without a step is a frame row the sender numbers once for all its keys; where the keys were last
    logged at different steps (one appended alone), the frame goes per key and each continues from its own."""
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": 1.0, "b": 2.0})
        run.log({"a": 3.0, "b": 4.0})
        run.log({"a": 5.0, "b": 6.0}, step=10)  # an explicit step in between moves both
        run.log({"a": 7.0, "b": 8.0})
        assert frames_of(run) == {("a", "b"): 4}
        run.wait(30)
        run["a"].append(9.0)  # a alone: step 12; b stays at 11
        run.wait(30)
        run.log({"a": 1.5, "b": 2.5})
        run.log({"a": 3.5, "b": 4.5})
        assert frames_of(run) == {("a", "b"): 2}
    assert stored(store_dir) == {
        "a": [(0, 1.0), (1, 3.0), (10, 5.0), (11, 7.0), (12, 9.0), (13, 1.5), (14, 3.5)],
        "b": [(0, 2.0), (1, 4.0), (10, 6.0), (11, 8.0), (12, 2.5), (13, 4.5)],
    }


@pytest.mark.usefixtures("socket_path")
def test_a_dict_with_tensors_is_a_frame_row_whose_tensors_are_read_at_the_cut_or_follow_a_spill(
    store_dir: Path,
) -> None:
    """A tensor among a dict's plain numbers (a loss) no longer sends the dict per key: the row holds a NaN, the
    snapshot is read at the cut; a per-key append spilling such a frame takes the reads to the columns."""
    torch = pytest.importorskip("torch")
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        loss = torch.tensor(1.5)
        run.log({"loss": loss, "lr": 0.1, "acc": torch.tensor([0.25])}, step=0)
        loss += 10  # changed in place after the call: the snapshot keeps 1.5
        run.log({"loss": torch.tensor(2.5), "lr": 0.2, "acc": torch.tensor(0.5)})  # no step: numbered 1
        run.log({"x": torch.tensor(3.0), "y": 4.0}, step=0)
        run.log({"x": torch.tensor(5.0), "y": 6.0}, step=1)
        assert frames_of(run) == {("loss", "lr", "acc"): 2, ("x", "y"): 2}
        run["x"].append(torch.tensor(7.0), step=2)  # spills (x, y): the reads of 3.0 and 5.0 go with them
        with pytest.raises(TypeError, match="must be a scalar, got a tensor with 2 elements"):
            run.log({"loss": torch.tensor([1.0, 2.0]), "lr": 0.3, "acc": 0.75}, step=2)
        assert frames_of(run) == {}  # the rejected call went per key: it spilled the frame, whose points stay
    assert stored(store_dir) == {
        "loss": [(0, 1.5), (1, 2.5)],
        "lr": [(0, 0.1), (1, 0.2)],
        "acc": [(0, 0.25), (1, 0.5)],
        "x": [(0, 3.0), (1, 5.0), (2, 7.0)],
        "y": [(0, 4.0), (1, 6.0)],
    }


@pytest.mark.usefixtures("socket_path")
def test_keys_logged_one_by_one_last_generation_form_a_frame_in_the_next(store_dir: Path) -> None:
    """The cutter builds empty columns ahead for last generation's keys; a frame drops them."""
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": 1.0}, step=0)
        run.log({"b": 2.0}, step=0)
        run.wait(30)
        run.log({"a": 3.0, "b": 4.0}, step=1)
        assert frames_of(run) == {("a", "b"): 1}
        with run._buf.lock:
            assert "a" not in run._buf.cols and "b" not in run._buf.cols
    assert stored(store_dir) == {"a": [(0, 1.0), (1, 3.0)], "b": [(0, 2.0), (1, 4.0)]}


@pytest.mark.usefixtures("socket_path")
def test_a_frame_outlives_its_generation_until_one_passes_without_it(store_dir: Path) -> None:
    """A cut takes a frame's rows and leaves the frame: the next dict of its keys appends to it
    without opening one (no key validated or marked again); a per-key call still spills it first,
    and a generation without a row of it lets it go."""
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": 1.0}, step=0)
        run.log({"b": 2.0}, step=0)
        run.wait(30)
        run.log({"a": 3.0, "b": 4.0}, step=1)
        kept = run._buf.frames[("a", "b")]
        run.wait(30)  # its fresh columns for a and b (logged per key before) give way to the frame
        assert frames_of(run) == {("a", "b"): 0} and run._buf.frames[("a", "b")] is kept
        with run._buf.lock:
            assert "a" not in run._buf.cols and "b" not in run._buf.cols
        run.log({"a": 5.0, "b": 6.0}, step=2)
        assert frames_of(run) == {("a", "b"): 1} and run._buf.frames[("a", "b")] is kept
        run.wait(30)
        run["a"].append(7.0, step=3)  # per key: the kept frame (no row yet) spills
        assert frames_of(run) == {}
        run.log({"b": 8.0, "a": 9.0}, step=4)
        run.log({"c": 1.0, "d": 2.0}, step=0)
        run.wait(30)
        assert frames_of(run) == {("c", "d"): 0}
        run["x"].append(1.0, step=0)
        run.wait(30)  # a generation without a row of (c, d): the frame goes, its keys are free
        assert frames_of(run) == {}
        run.log({"d": 3.0, "c": 4.0}, step=1)  # another order of the same keys: a frame of its own
        assert frames_of(run) == {("d", "c"): 1}
    assert stored(store_dir) == {
        "a": [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0), (4, 9.0)],
        "b": [(0, 2.0), (1, 4.0), (2, 6.0), (4, 8.0)],
        "c": [(0, 1.0), (1, 4.0)],
        "d": [(0, 2.0), (1, 3.0)],
        "x": [(0, 1.0)],
    }


def test_a_rejected_value_in_a_framed_call_keeps_nothing_of_that_call(store_dir: Path) -> None:
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log({"a": 1.0, "b": 2.0, "c": 3.0}, step=0)
        with pytest.raises(ValueError, match="'b'"):
            run.log({"a": 4.0, "b": 10**400, "c": 5.0}, step=1)  # a fails nothing, b overflows mid-row
        with pytest.raises(ValueError):
            run.log({"x": 1.0, "y": 10**400}, step=0)  # the first call of a frame
        run.log({"a": 6.0, "b": 7.0, "c": 8.0}, step=2)
        run.log({"x": 9.0, "y": 10.0}, step=3)
        run.wait(30)
        assert run.stats()["acked"] == 8
    assert stored(store_dir) == {
        "a": [(0, 1.0), (2, 6.0)],
        "b": [(0, 2.0), (2, 7.0)],
        "c": [(0, 3.0), (2, 8.0)],
        "x": [(3, 9.0)],
        "y": [(3, 10.0)],
    }


def test_a_frames_keys_are_validated_like_any_new_key(store_dir: Path) -> None:
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run["notes"].append("a text")
        run["cfg/lr"] = 0.1
        bad: list[tuple[Any, type[Exception]]] = [
            ({"notes": 1.0, "u": 2.0}, TypeError),
            ({"u": 2.0, "cfg/lr": 1.0}, ValueError),
            ({"u": 2.0, "sys/x": 1.0}, ValueError),
            ({"u": 2.0, 5: 1.0}, TypeError),
            ({"u": 2.0, "a//b": 1.0}, ValueError),
        ]
        for data, exc in bad:
            with pytest.raises(exc):
                run.log(data, step=0)
        assert frames_of(run) == {}
        run.log({"u": 1.0, "v": 2.0}, step=1)
        run.wait(30)
    got = stored(store_dir)
    assert got == {"u": [(1, 1.0)], "v": [(1, 2.0)]}


@pytest.mark.usefixtures("socket_path")
def test_numpy_scalars_of_the_usual_types_go_to_a_frame_with_the_per_key_paths_values(store_dir: Path) -> None:
    """float64/float32/int64/int32 values are framed; each is stored as the per-key path stores it."""
    values = {"f64": np.float64(0.1), "f32": np.float32(0.1), "i64": np.int64(2**53 + 1), "i32": np.int32(-4)}
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        run.log(values, step=0)
        assert frames_of(run) == {tuple(values): 1}
        for k, v in values.items():
            run[f"per_key/{k}"].append(v, step=0)
        run.wait(30)
    got = stored(store_dir)
    for k in values:
        assert got[k] == got[f"per_key/{k}"] == [(0, float(values[k]))]


class _Interrupt(Exception):
    """Raised by the test's SIGALRM handler, as Ctrl-C raises KeyboardInterrupt, wherever the main thread is."""


@pytest.mark.timeout(300, method="thread")  # the test takes SIGALRM, which the default timeout method uses
@pytest.mark.parametrize("rings", [False, True], ids=["buffer", "rings"])
def test_an_interrupt_at_any_point_of_a_hot_call_leaves_the_buffer_unlocked_and_every_point_paired(
    store_dir: Path, rings: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal's exception lands between two bytecodes of log() or append(), as Ctrl-C's does (with
    ``Settings.rings`` too: a row published before the interrupt is counted among the accepted).

    300 interrupts per kind of call, at random moments. After each the buffer's lock is free (it
    is taken with ``with``: an ``acquire()`` then ``try/finally`` left it held in 1,810 of 4,000
    such interrupts in a measurement, and the run's close then waits for ever), the run goes on,
    and what is stored pairs every value with its own step (each value is its step): a column
    left with a value but not its step would shift every later point of its key by one step.

    An exception raised inside a ``__del__`` or a weak reference's callback is printed and
    dropped by Python, whoever raises it. A garbage collection in the loop could run one (for an
    object an earlier test left), and the call loop then never ended: the collector is off
    while the calls run, each interrupt has 5 s to arrive, and one swallowed in coordinator's own
    code fails the test, naming where.
    """
    import gc
    import os
    import random
    import signal
    import time

    raised_in: list[str] = []

    def interrupt(signum: int, frame: Any) -> None:
        raised_in.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else "?")
        raise _Interrupt

    calls = {
        "scalar": lambda run, s: run.log({"loss": float(s)}, step=s),
        "dict": lambda run, s: run.log({"a": float(s), "b": float(s), "c": float(s)}, step=s),
        "new keys": lambda run, s: run.log({f"n{s % 7}": float(s), "m": float(s)}, step=s),
        "append": lambda run, s: run["x"].append(float(s), step=s),
    }
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = dict.fromkeys(calls, 0)
    swallowed_elsewhere: list[str] = []
    ours = str(Path(coordinator.__file__).parent) + os.sep
    gc.collect()
    gc.disable()
    try:
        monkeypatch.delenv("COORDINATOR_RINGS", raising=False)  # each variant takes the path it names
        settings = dataclasses.replace(ONE_GENERATION, rings=rings)
        with coordinator.init_run(project="t", settings=settings) as run:
            assert (run._ring is not None and run._ring.on) is rings
            rnd = random.Random(7)
            step = 0
            for name, call in calls.items():
                while interrupted[name] < 300:
                    raised_in.clear()
                    try:
                        signal.setitimer(signal.ITIMER_REAL, rnd.uniform(0.0001, 0.0005))
                        deadline = time.monotonic() + 5.0
                        while time.monotonic() < deadline:
                            call(run, step)
                            step += 1
                    except _Interrupt:
                        interrupted[name] += 1
                        step += 1  # the interrupted call's step is not logged again
                    else:
                        assert raised_in, f"no interrupt came in 5 s of {name!r} calls"
                        where = raised_in[-1]
                        assert not where.startswith(ours), f"{name!r}: coordinator swallowed it: {where}"
                        swallowed_elsewhere.append(where)
                        assert len(swallowed_elsewhere) <= 3, swallowed_elsewhere
                    lock = run._buf.lock
                    assert lock.acquire(timeout=5), f"an interrupted {name!r} call left the buffer's lock held"
                    lock.release()
            signal.setitimer(signal.ITIMER_REAL, 0)
            run.wait(60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
    assert interrupted == dict.fromkeys(calls, 300)
    st = open_store(store_dir)
    try:
        report = st.run_info().report
    finally:
        st.close()
    assert report is not None and report["state"] == "finished", report and report.get("failed_ranks")
    points = stored(store_dir)
    assert report["per_rank"]["0"]["accepted"] == sum(map(len, points.values()))  # the interrupted calls counted right
    assert {"loss", "a", "b", "c", "m", "x"} <= points.keys()
    for key, pts in points.items():
        steps = [s for s, _ in pts]
        assert len(steps) == len(set(steps)), f"{key}: a step stored twice"
        assert all(v == s for s, v in pts), (
            f"{key}: a value stored with another step: {[p for p in pts if p[0] != p[1]][:3]}"
        )


def _consistent(run: Run) -> None:
    """The buffer's invariants: every column and text series paired, every frame whole, a key in one place."""
    b = run._buf
    assert b.lock.acquire(timeout=5), "the buffer's lock was left held"
    try:
        for k, (steps, values) in b.cols.items():
            assert len(steps) == len(values), f"column {k!r}: {len(steps)} steps, {len(values)} values"
        for k, (steps, texts) in b.texts.items():
            assert len(steps) == len(texts), f"text series {k!r}: {len(steps)} steps, {len(texts)} texts"
        for kt, fr in b.frames.items():
            assert len(fr.values) == len(fr.steps) * len(kt), f"frame {kt}: a partial row"
            assert all(b.framed.get(k) is fr for k in kt), f"frame {kt}: keys not marked framed"
            assert not any(b.cols.get(k, ((),))[0] for k in kt), f"frame {kt}: a key also has a column"
        assert set(b.framed) == {k for kt in b.frames for k in kt}
        dev = run._dev
        reads = [(i, values) for _, values, pending in dev._pending.values() for i, _, _ in pending]
        assert all(i < len(values) and math.isnan(values[i]) for i, values in reads), "a tensor read past its column"
        assert dev._count == len(reads), f"{dev._count} deferred tensor reads counted, {len(reads)} held"
    finally:
        b.lock.release()


_SIGNAL_POINTS = frozenset({"CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD"})
"""The instructions after which CPython 3.11 runs a pending signal's handler (and a function's ``RESUME``)."""


class _RaisingAt:
    """A trace function that raises :class:`_Interrupt` at the ``n``-th point of coordinator's code
    where a signal's exception could land.

    Those points: right after a call that returned or a loop's backward jump, and at a function's
    start, where CPython runs pending signal handlers (Ctrl-C's ``KeyboardInterrupt`` lands nowhere
    else; not in the handler a raising call jumps to, e.g. a ``with`` block's exit). Only
    the package's own frames: not, say, a weakref callback the garbage collector runs meanwhile,
    where the exception would be ignored. Tracing stops after the raise (:attr:`fired`).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.fired = False
        self._before: dict[Any, str] = {}

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        if "/coordinator/" not in frame.f_code.co_filename:
            return self
        frame.f_trace_opcodes = True
        if event == "exception":  # the call before raised: CPython checks for signals only after one that returned
            self._before[frame] = "raised"
        elif event == "call" or event == "opcode":  # a function's start (its RESUME is not traced), or an opcode
            prev = self._before.get(frame)
            self._before[frame] = "RESUME" if event == "call" else dis.opname[frame.f_code.co_code[frame.f_lasti]]
            if event == "call" or prev in _SIGNAL_POINTS:
                self.seen += 1
                if self.seen == self.n:
                    self.fired = True
                    raise _Interrupt
        return self


def test_an_exception_at_every_bytecode_of_a_hot_call_leaves_the_buffer_consistent(store_dir: Path) -> None:
    """Exhaustive, where the signal test samples: an exception is raised at the 1st, 2nd, ... point
    of one call where a signal's could land (its callees' too, through a trace function) until
    the call completes untouched.

    The calls: a scalar at a new key and at a known one, a dict opening a frame of new keys and a
    row of a known frame, an append spilling a frame, a text, dicts rejected for a bad value, of
    new keys, of known ones and with a tensor (the raise lands in their undoing too). After each
    raise the buffer's
    invariants hold (paired columns, whole frame rows, each key in one place, the lock free);
    at the end every stored value is its own step, each step once per key.
    """
    import sys

    torch = pytest.importorskip("torch")
    calls: dict[str, Callable[[Run, int, int], None]] = {
        "scalar, new key": lambda run, s, i: run.log({f"n{i}": float(s)}, step=s),
        "scalar": lambda run, s, i: run.log({"loss": float(s)}, step=s),
        "dict, new frame": lambda run, s, i: run.log({f"f{i}a": float(s), f"f{i}b": float(s)}, step=s),
        "dict": lambda run, s, i: run.log({"a": float(s), "b": float(s), "c": float(s)}, step=s),
        "append, spilling": lambda run, s, i: run[f"f{i}a"].append(float(s), step=s),
        "append": lambda run, s, i: run["x"].append(float(s), step=s),
        "text": lambda run, s, i: run["t"].append(str(s), step=s),
        "dict, rejected, new keys": lambda run, s, i: run.log(
            {f"p{i}": float(s), f"q{i}": float(s), f"r{i}": str(s)}, step=s
        ),
        "dict, rejected": lambda run, s, i: run.log({"p": float(s), "q": float(s), "r": str(s)}, step=s),
        "tensors, rejected": lambda run, s, i: run.log(
            {"u": torch.tensor(float(s)), "v": float(s), "w": str(s)}, step=s
        ),
    }
    positions = {}
    step = 0
    with coordinator.init_run(project="t", settings=ONE_GENERATION) as run:
        for name, call in calls.items():
            n = 0
            while True:
                n += 1
                i = step
                if name == "append, spilling":  # the frame it spills, logged untraced first
                    run.log({f"f{i}a": float(step), f"f{i}b": float(step)}, step=step)
                    step += 1
                if name == "dict, rejected":  # its keys known and their columns in this generation
                    run.log({"p": float(step), "q": float(step)}, step=step)
                    step += 1
                if name == "tensors, rejected":  # a deferred read at the column's end already
                    run.log({"u": torch.tensor(float(step)), "v": float(step)}, step=step)
                    step += 1
                tracer = _RaisingAt(n)
                sys.settrace(tracer)
                try:
                    call(run, step, i)
                    done = True
                except TypeError:  # a rejected call, not interrupted (or after its interrupt point)
                    done = name.endswith("rejected") or name.endswith("rejected, new keys")
                    assert done, name
                except _Interrupt:
                    done = False
                finally:
                    sys.settrace(None)
                assert not (done and tracer.fired), f"{name}: the exception at point {n} was swallowed"
                step += 1
                _consistent(run)
                if done:
                    break
            positions[name] = n - 1
        run.wait(60)
    assert all(n > 10 for n in positions.values()), positions  # the raises reached into each call
    for key, pts in stored(store_dir).items():
        steps = [s for s, _ in pts]
        assert len(steps) == len(set(steps)), f"{key}: a step stored twice"
        assert all(v == s for s, v in pts), f"{key}: a value stored with another step"
