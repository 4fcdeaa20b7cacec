"""The hot-path patterns' interpreter floor: a stand-in of log()'s shape, timed as the real run is."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from benchmarks.hotpatterns import _KEYS, _FlushFlag, _SameShape, _scalar_new_steps


def test_the_stand_in_does_the_column_paths_work_and_refuses_what_log_refuses() -> None:
    s = _SameShape()
    for i in range(3):
        s.log({"loss": i * 0.5}, i)
    assert s._cols == {"loss": ([0, 1, 2], [0.0, 0.5, 1.0])}
    with pytest.raises(TypeError):
        s.log({"loss": 1.0}, "1")  # a str step, as a typo would give
    for i in range(3, 10_000):
        s.log({"loss": 0.0}, i)
    assert s._cols["loss"] == ([], [])  # cut, as the sender would: the lists stay short


def test_the_new_steps_loop_times_every_call_of_the_stand_in() -> None:
    lat, flushed = _scalar_new_steps(_SameShape(), 0.04)  # two paced steps of 100 calls
    assert len(lat) == 2 * _KEYS
    assert all(ns > 0 for ns in lat)
    assert list(flushed) == [0, 0]


@pytest.mark.usefixtures("socket_path")
def test_the_new_steps_loop_marks_the_steps_whose_sleep_held_a_sender_flush(tmp_path: Path) -> None:
    """A real run flushing every 50 ms, steps every 20 ms: about 2 sleeps in 5 hold a flush (20 flushes in the
    second, less those that fall in a step's own calls)."""
    run = coordinator.init_run(
        project="bench",
        name="first-calls",
        settings=coordinator.Settings(rank=0, world_size=1, dir=str(tmp_path), system_metrics_interval_s=0),
    )
    try:
        flag = _FlushFlag(run._sender)
        _, flushed = _scalar_new_steps(run, 1.0, flag)
    finally:
        run.stop(60)
    assert len(flushed) == 50
    assert 8 <= sum(flushed) <= 35, list(flushed)  # ~20 flushes in the second, a few in a step's calls
