"""Calls without a step with a ring: numbered on the rank as the sender would number them, and into the ring.

Each test runs a real rank 0 with its aggregator and reads back what the store holds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coordinator
from coordinator.client.rowpath import PURE_ENV, built
from coordinator.journal.store import LocalStore, list_runs
from tests.client.helpers import open_store

pytestmark = pytest.mark.usefixtures("ring_path")

KEYS = ("a", "b", "c", "d")
DICTS = (("a",), ("b",), ("a", "b"), ("c", "d"), ("b", "c", "d"), KEYS, ("a", "new"))


def _ops(seed: int, n: int) -> list[tuple[Any, ...]]:
    """A user's mix of calls: dicts and appends with and without steps, values a row does not take (over the socket),
    refused calls, waits; explicit steps sometimes behind a key's last (a rewrite)."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for i in range(n):
        r = rng.random()
        step = rng.choice([None, None, None, max(0, i // 3 + rng.randrange(-8, 8))])
        if r < 0.4:
            ops.append(("log", rng.choice(DICTS), float(i), step))
        elif r < 0.75:
            ops.append(("append", rng.choice(KEYS), float(i), step))
        elif r < 0.85:
            ops.append(("socket", rng.choice(DICTS), float(i % 7), step))  # a float16: not a row's type
        elif r < 0.9:
            ops.append(("bad", rng.choice(DICTS), step))
        else:
            ops.append(("wait",))
    return ops


def _play(
    ops: list[tuple[Any, ...]], rings: bool, store_dir: Path
) -> tuple[dict[str, list[tuple[int, float]]], int, int]:
    """Run ``ops`` on a fresh run; its stored series, the points that went into the ring, and the refused calls."""
    refused = 0
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=rings)) as run:
        assert (run._ring is not None and run._ring.on) == rings
        for op in ops:
            kind = op[0]
            if kind == "log":
                run.log(dict.fromkeys(op[1], op[2]), step=op[3])
            elif kind == "append":
                run[op[1]].append(op[2], step=op[3])
            elif kind == "socket":
                run.log(dict.fromkeys(op[1], np.float16(op[2])), step=op[3])
            elif kind == "bad":
                with pytest.raises(TypeError):
                    run.log({**dict.fromkeys(op[1], 1.0), "z": "text"}, step=op[2])  # a str for a number
                refused += 1
            else:
                run.wait(30)
        ring_points = run.stats().get("ring_points", 0)
        run_id = run.id
    [info] = [i for i in list_runs(store_dir) if i.path.name == run_id]
    s = LocalStore(info.path / "run.db", readonly=True)
    try:
        return {k: s.values(k, 0) for k in (*KEYS, "new", "z")}, ring_points, refused
    finally:
        s.close()


@pytest.mark.parametrize("pure", [False, True], ids=["c_path", "python_path"])
def test_calls_without_a_step_store_what_the_socket_path_stores_and_most_go_into_the_ring(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """The same 1,500 calls over the socket (the sender numbers each key) and with a ring, in C and in Python:
    every key holds the same points at the same steps. The mix is hard on the ring: values a row does not take
    (and rows behind them until acknowledged), keys in several dicts, dicts whose keys were last logged apart."""
    if not pure and not built():
        pytest.skip("the C extension was not built")
    ops = _ops(seed=12, n=1500)
    socket, none_in_ring, refused = _play(ops, rings=False, store_dir=store_dir)
    assert none_in_ring == 0 and refused > 0
    if pure:
        monkeypatch.setenv(PURE_ENV, "1")
    ring, in_ring, _ = _play(ops, rings=True, store_dir=store_dir)
    assert ring == socket
    assert sum(map(len, socket.values())) > 1000 and socket["z"] == []
    assert in_ring > 300  # of ~1,750 points of plain numbers: this mix sends many over the socket on purpose


def test_a_resumed_rank_numbers_its_calls_without_a_step_after_its_stored_steps_in_the_ring(store_dir: Path) -> None:
    """A key's stored steps come in the WELCOME, before the ring is written: a new incarnation's calls without a
    step continue after them, as rows."""
    with coordinator.init_run(with_id="resume-ring", settings=coordinator.Settings(rings=False)) as run:
        for i in range(5):
            run["a"].append(float(i))
        run.log({"b": 0.0, "c": 0.0}, step=7)
    with coordinator.init_run(with_id="resume-ring", settings=coordinator.Settings(rings=True)) as run:
        for i in range(3):
            run["a"].append(float(100 + i))
        run.log({"b": 1.0, "c": 1.0})
        run.log({"d": 2.0})  # a new key starts at 0
        assert run.stats()["ring_points"] == 3 + 2 + 1
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(i, float(i)) for i in range(5)] + [(5 + i, 100.0 + i) for i in range(3)]
        assert s.values("b", 0) == [(7, 0.0), (8, 1.0)] and s.values("c", 0) == [(7, 0.0), (8, 1.0)]
        assert s.values("d", 0) == [(0, 2.0)]
    finally:
        s.close()


def test_a_key_the_sender_numbers_goes_into_the_ring_once_its_points_are_acknowledged(store_dir: Path) -> None:
    """A key with points over the socket that the sender has not numbered yet stays there (the ring cannot know
    their steps); once they are acknowledged, the next call without a step is a row after them. The first points
    go over the socket as before a WELCOME said the ring is read (or after one that said it no longer is)."""
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True, flush_interval_s=60)) as run:
        ring = run._ring
        assert ring is not None and ring.on
        ring.on = False  # as before the WELCOME
        run.log({"a": 1.0, "b": 1.0})  # over the socket, numbered by the sender (0)
        run["a"].append(2.0)  # 1
        ring.on = True
        run["a"].append(3.0)  # its earlier points wait in the buffer, not numbered: over the socket too (2)
        assert run.stats()["ring_points"] == 0 and "a" not in ring.owned
        run.wait(30)  # numbered, sent and acknowledged
        run["a"].append(4.0)  # 3, a row
        run.log({"a": 5.0})  # 4, a row
        run.log({"a": 6.0, "b": 2.0})  # their last steps differ (4, 0): over the socket, 5 and 1
        assert run.stats()["ring_points"] == 2 and "a" in ring.owned and "b" not in ring.owned
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0), (5, 6.0)]
        assert s.values("b", 0) == [(0, 1.0), (1, 2.0)]
    finally:
        s.close()


def test_a_training_loops_calls_without_a_step_are_rows_and_keys_logged_apart_keep_their_own_steps(
    store_dir: Path,
) -> None:
    """The usual loop without steps: a dict each step, a key appended each step, one every tenth; each a row. A
    dict of keys whose last steps differ goes over the socket, each key at its own next step, as the sender
    numbers it; the rows after it continue from there."""
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        for i in range(100):
            run.log({"loss": float(i), "acc": float(i)})
            run["lr"].append(float(i))
            if i % 10 == 0:
                run["val"].append(float(i))
        assert run.stats()["ring_points"] == 200 + 100 + 10
        run.log({"lr": 100.0, "val": 10.0})  # their last steps are 99 and 9: over the socket, 100 and 10
        run["lr"].append(101.0)  # behind that write, not yet acknowledged: over the socket too, at 101
        run.wait(30)  # acknowledged: val's next row is not held behind it
        run["val"].append(11.0)
        run.log({"loss": 100.0, "acc": 100.0})
        assert run.stats()["ring_points"] == 200 + 100 + 10 + 3
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == s.values("acc", 0) == [(i, float(i)) for i in range(101)]
        assert s.values("lr", 0) == [(i, float(i)) for i in range(102)]
        assert s.values("val", 0) == [(i, float(10 * i)) for i in range(10)] + [(10, 10.0), (11, 11.0)]
    finally:
        s.close()


def test_a_refused_call_after_a_write_over_the_socket_leaves_the_next_call_without_a_step_after_that_write(
    store_dir: Path,
) -> None:
    """A key's frame held behind its write over the socket, acknowledged, then a call refused (a str for a number):
    the frame stays behind that write, so the next call without a step continues after it, not after the frame's
    last row (which the C path would take from the frame)."""
    with coordinator.init_run(project="t", settings=coordinator.Settings(rings=True)) as run:
        for s in range(5):
            run["a"].append(float(s), step=s)  # rows
        run.log({"a": np.float16(10.0)}, step=10)  # over the socket: the frame is held behind it
        run.wait(30)
        with pytest.raises(TypeError):
            run.log({"a": "x"}, step=11)
        run["a"].append(11.0)
        run.log({"a": 12.0})
        assert run.stats()["ring_points"] == 5 + 2
    s = open_store(store_dir)
    try:
        assert s.values("a", 0) == [(s, float(s)) for s in range(5)] + [(10, 10.0), (11, 11.0), (12, 12.0)]
    finally:
        s.close()
