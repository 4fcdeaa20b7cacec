"""The hot-path patterns' interpreter floor: a stand-in of log()'s shape, timed as the real run is."""

from __future__ import annotations

import pytest

from benchmarks.hotpatterns import _KEYS, _SameShape, _scalar_new_steps


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
    lat = _scalar_new_steps(_SameShape(), 0.04)  # two paced steps of 100 calls
    assert len(lat) == 2 * _KEYS
    assert all(ns > 0 for ns in lat)
