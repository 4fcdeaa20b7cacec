"""Validation at the call site and the hot path: log, append, fields, policies, threads."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import SupportsFloat

import pytest

import coordinator
from tests.client.helpers import open_store
from tests.untyped import bad


@pytest.mark.parametrize(
    ("data", "step", "exc"),
    [
        ({"loss": "0.5"}, 0, TypeError),
        ({"loss": None}, 0, TypeError),
        ({"loss": [1.0, 2.0]}, 0, TypeError),
        ({"loss": 1.0, "acc": "x"}, 0, TypeError),
        ({5: 1.0}, 0, TypeError),
        ({"": 1.0}, 0, ValueError),
        ({"a//b": 1.0}, 0, ValueError),
        ({"../etc": 1.0}, 0, ValueError),
        ({"x" * 600: 1.0}, 0, ValueError),
        ({"loss": 10**400}, 0, ValueError),
        ({"loss": 1.0}, -1, ValueError),
        ({"loss": 1.0}, 1.5, TypeError),
        ({"loss": 1.0}, "3", TypeError),
        ([("loss", 1.0)], 0, TypeError),
    ],
)
def test_bad_log_input_raises_at_call_site_and_keeps_nothing_of_the_call(
    store_dir: Path, data: object, step: object, exc: type[Exception]
) -> None:
    """A rejected log() raises TypeError/ValueError and stores none of its points; good points all arrive."""
    with coordinator.init_run(project="t") as run:
        run.log({"loss": 0.25, "acc": 0.5}, step=0)
        with pytest.raises(exc):
            run.log(bad(data), step=bad(step))
        run.log({"loss": 0.125, "acc": 0.75}, step=1)
        run.wait(timeout=30)
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == [(0, 0.25), (1, 0.125)]
        assert s.values("acc", 0) == [(0, 0.5), (1, 0.75)]
        assert set(s.key_policies()) == {"loss", "acc"}
    finally:
        s.close()


def test_numeric_like_values_are_accepted(store_dir: Path) -> None:
    """bool, int, float, numpy scalars and 0-d tensors are stored as float64."""
    np = pytest.importorskip("numpy")
    values: list[SupportsFloat] = [True, 3, 2.5, np.float32(1.5), np.int64(7)]
    try:
        import torch

        values.append(torch.tensor(4.0))
    except ImportError:
        pass  # the tensor case runs where the torch extra is installed
    with coordinator.init_run() as run:
        for i, v in enumerate(values):
            run.log({"m": v}, step=i)
    s = open_store(store_dir)
    try:
        assert [v for _, v in s.values("m", 0)] == [float(v) for v in values]
    finally:
        s.close()


def test_append_without_step_counts_per_key_and_continues_after_explicit_steps(store_dir: Path) -> None:
    """Omitted steps are the rank's previous step for that key + 1, like Neptune's append()."""
    with coordinator.init_run() as run:
        h = run["series/a"]
        h.append(1.0)
        h.append(2.0)
        h.append(3.0, step=10)
        h.append(4.0)
        run.log({"series/b": 5.0})
        run.wait(30)
        h.append(6.0)
    s = open_store(store_dir)
    try:
        assert [st for st, _ in s.values("series/a", 0)] == [0, 1, 10, 11, 12]
        assert [st for st, _ in s.values("series/b", 0)] == [0]
    finally:
        s.close()


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (None, TypeError),
        (object(), TypeError),
        ({"a": {}}, ValueError),
        ([1, [2]], TypeError),
        ({1: 2}, TypeError),
        (2**70, ValueError),
        ("x" * 70_000, ValueError),
    ],
)
def test_bad_field_raises_and_keeps_nothing_of_the_assignment(store_dir: Path, value: object, exc: type) -> None:
    """A rejected assignment raises and stores none of its entries (not even valid siblings)."""
    with coordinator.init_run() as run:
        with pytest.raises(exc):
            run["params"] = {"ok": 1, "bad": value}
        run["good"] = 1
    s = open_store(store_dir)
    try:
        f = s.fields()
        assert "params/ok" not in f and f["good"] == ("int", 1)
    finally:
        s.close()


def test_fields_fetch_read_your_writes_and_types(store_dir: Path) -> None:
    """Fields of every type read back from the local view and from the store."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with coordinator.init_run(project="proj", name="nm") as run:
        run["parameters"] = {"lr": 0.1, "bs": 32, "name": "resnet", "flag": True, "dims": [1, 2], "t": when}
        assert run["parameters/lr"].fetch() == 0.1
        assert run["parameters"].fetch()["dims"] == [1, 2]
        run.sync(wait=True, timeout=30)
        assert run["sys/name"].fetch() == "nm"
        assert run["sys/state"].fetch() == "running"
        assert run["parameters/t"].fetch() == when
        with pytest.raises(ValueError):
            run["sys/state"] = "hacked"
        with pytest.raises(ValueError):
            run.log({"parameters/lr": 1.0})
        with pytest.raises(KeyError):
            run["nothing/here"].fetch()
    s = open_store(store_dir)
    try:
        f = s.fields()
        assert f["parameters/bs"] == ("int", 32) and f["parameters/flag"] == ("bool", True)
        assert f["sys/state"] == ("str", "finished")
    finally:
        s.close()


def test_threads_may_log_concurrently(store_dir: Path) -> None:
    """Several threads logging to one run lose nothing."""
    with coordinator.init_run() as run:

        def work(i: int) -> None:
            h = run[f"t/{i}"]
            for s in range(2000):
                h.append(float(s), step=s)
                run.log({"shared": float(i)}, step=s)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    s = open_store(store_dir)
    try:
        for i in range(4):
            assert len(s.values(f"t/{i}", 0)) == 2000
        # Each step of "shared" was logged 4 times by this rank: the later value replaces (item 14),
        # so 2000 points, and the stored points count all 8000 that were accepted.
        assert [st for st, _ in s.values("shared", 0)] == list(range(2000))
        report = s.run_info().report
        assert report is not None and report["per_rank"]["0"]["accepted"] == 8000 + 4 * 2000
    finally:
        s.close()


def test_per_call_policy_overrides_the_globs_and_a_key_keeps_its_first_policy(store_dir: Path) -> None:
    """log(..., policy=) sets a key's reduction; switching it later or an unknown policy raises ValueError."""
    with coordinator.init_run(policies={"*": "min"}) as run:
        run.log({"tp": 3.0}, step=0, policy="sum")
        run["best"].append(1.0, step=0, policy="max")
        run.log({"other": 1.0}, step=0)
        with pytest.raises(ValueError, match="first policy"):
            run.log({"tp": 1.0}, step=1, policy="mean")
        with pytest.raises(ValueError, match="not one of"):
            run.log({"z": 1.0}, step=0, policy="median")
        with pytest.raises(ValueError, match="first policy"):
            run.log({"other": 1.0}, step=1, policy="max")
    s = open_store(store_dir)
    try:
        assert s.key_policies() == {"tp": "sum", "best": "max", "other": "min"}
        assert s.fields()["sys/policy/tp"] == ("str", "sum")
    finally:
        s.close()


def test_a_full_batch_is_sent_without_waiting_for_the_flush_interval(store_dir: Path) -> None:
    """Flush by volume: a generation that reaches max_batch_points wakes the sender (interval 60 s here)."""
    settings = coordinator.Settings(flush_interval_s=60.0, max_batch_points=1_000)
    keys = [f"k{i}" for i in range(100)]
    with coordinator.init_run(settings=settings) as run:
        for step in range(10):  # 1,000 points: the mark is reached, checked by the next call
            run.log(dict.fromkeys(keys, float(step)), step=step)
        run["series/x"].append(1.0, step=0)  # the next call wakes the sender
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline and stored < 1_000:
            time.sleep(0.05)
            s = open_store(store_dir)
            try:
                stored = sum(len(s.values(k, 0)) for k in keys)
            finally:
                s.close()
        assert stored == 1_000, f"{stored} of 1,000 points stored before the 60 s flush interval"
        run["series/x"].append(2.0, step=1)  # the sender was woken once: this one waits for wait()
        run.wait(timeout=30)
    s = open_store(store_dir)
    try:
        assert s.values("series/x", 0) == [(0, 1.0), (1, 2.0)]
        assert all(s.values(k, 0) == [(i, float(i)) for i in range(10)] for k in keys)
    finally:
        s.close()
