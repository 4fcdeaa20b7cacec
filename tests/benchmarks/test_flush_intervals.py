"""The flush-interval sweep: each job's threads summed right, and a longer interval measured as fewer wake-ups."""

from __future__ import annotations

import pytest

from benchmarks.flush_intervals import label, measure, parse_variant, summarize


def _rank(rank: int, *, aggregator: bool) -> dict[str, object]:
    threads = [
        {"name": "MainThread", "cpu_s": 0.5, "wakeups": 500},
        {"name": f"coordinator-sender-r{rank}", "cpu_s": 0.02, "wakeups": 200},
        {"name": "ZMQbg/IO/0", "cpu_s": 0.01, "wakeups": 300},
    ]
    agg = [{"name": "python", "cpu_s": 0.04, "wakeups": 350}, {"name": "ZMQbg/IO/0", "cpu_s": 0.01, "wakeups": 650}]
    return {
        "rank": rank,
        "points": 50_000,
        "seconds": 10.0,
        "threads": threads,
        "aggregator": agg if aggregator else [],
        "log_cpu_s": 0.03,
    }


def test_a_jobs_threads_are_summed_per_second_and_per_point_without_the_training_threads() -> None:
    got = summarize([_rank(0, aggregator=True), _rank(1, aggregator=False)])
    assert got["ranks_ms"] == pytest.approx(6.0)  # (0.02 + 0.01) x 2 ranks over 10 s
    assert got["ranks_wakeups"] == pytest.approx(100.0)
    assert got["aggregator_ms"] == pytest.approx(5.0)
    assert got["aggregator_wakeups"] == pytest.approx(100.0)
    assert got["training_ms"] == pytest.approx(100.0)
    assert got["us_per_point"] == pytest.approx(1e6 * (0.06 + 0.05) / 100_000)
    assert got["log_ms"] == pytest.approx(6.0)  # 0.03 s in log() x 2 ranks over 10 s
    assert got["us_per_point_log"] == pytest.approx(1e6 * (0.06 + 0.05 + 0.06) / 100_000)


def test_a_job_without_its_aggregators_threads_or_any_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregator"):
        summarize([_rank(1, aggregator=False)])
    with pytest.raises(ValueError, match="no rank"):
        summarize([])


@pytest.mark.integration
@pytest.mark.multiprocess
@pytest.mark.usefixtures("socket_path")
def test_a_longer_interval_wakes_the_ranks_and_the_aggregator_less() -> None:
    short = measure(0.05, 2, 3.0, timeout_s=240)
    long = measure(0.5, 2, 3.0, timeout_s=240)
    copying = measure(0.5, 2, 3.0, timeout_s=240, kill_window_s=0.05)
    tensors = measure(0.5, 2, 3.0, timeout_s=240, kill_window_s=0.05, tensor_loss=True)
    # 20 flushes a second against 2, per rank: the senders and their I/O threads wake far less.
    assert long["ranks_wakeups"] < short["ranks_wakeups"] / 2
    assert long["aggregator_wakeups"] < short["aggregator_wakeups"]
    # Copies every 50 ms are made by the training threads, in their log() calls: nothing else wakes for them.
    assert copying["ranks_wakeups"] < short["ranks_wakeups"] / 2
    assert copying["aggregator_wakeups"] < short["aggregator_wakeups"]
    # A tensor in each step's dict: the copies read it and take it, so its rank is not cut (and woken) every window.
    assert tensors["ranks_wakeups"] < short["ranks_wakeups"] / 2
    assert short["us_per_point"] > 0 and long["us_per_point"] > 0 and short["training_ms"] > 0
    # The log() calls were timed: part of the training threads' CPU, and counted in the sum with them.
    assert 0 < short["log_ms"] < short["training_ms"] and short["us_per_point_log"] > short["us_per_point"]


def test_a_variant_is_an_interval_or_an_interval_and_a_kill_window_below_it() -> None:
    assert parse_variant("0.05") == (0.05, None)
    assert parse_variant("0.5/0.05") == (0.5, 0.05)
    assert label((0.5, 0.05)) == "500 ms, copies every 50 ms" and label((0.05, None)) == "50 ms"
    for bad in ("0", "11", "0.5/0.5", "0.5/0", "x"):
        with pytest.raises(ValueError):
            parse_variant(bad)
