"""The GIL-stretch benchmark's reading of ``perf script`` output: holds, waits, time off the CPU."""

from __future__ import annotations

from benchmarks.gil_holds import on_cpu, parse_events, parse_switches, run_settings, summarize
from coordinator.settings import Settings

# perf script -F pid,tid,time,event --ns, process 5: thread 10 waits 2 µs, holds 100 µs; thread 11
# waits 90 µs for it, then holds 40 µs; thread 10's second hold started before the recording's
# window. Process 6 (a child perf followed, as the aggregator a rank starts) has its own GIL.
_GIL = """\
  5/10 100.000001000:        coordgil:take:
  5/10 100.000003000:        coordgil:taken__return:
  5/11 100.000013000:        coordgil:take:
  5/10 100.000103000:        coordgil:drop:
  5/11 100.000103500:        coordgil:taken__return:
  5/11 100.000143500:        coordgil:drop:
  5/10 100.000200000:        coordgil:taken__return:
  6/60 100.000010000:        coordgil:taken__return:
  5/10 100.000500000:        coordgil:drop:
  6/60 100.000900000:        coordgil:drop:
 some other line perf prints
"""

# perf script --show-switch-events: thread 10 is switched out (preempted) for 30 µs in the middle
# of its first hold; thread 12 comes in without having been seen going out.
_SCHED = """\
  5/10 100.000050000: PERF_RECORD_SWITCH OUT preempt
  5/12 100.000060000: PERF_RECORD_SWITCH IN
  5/10 100.000080000: PERF_RECORD_SWITCH IN
"""


def test_holds_and_waits_are_read_per_thread() -> None:
    threads = parse_events(_GIL.splitlines(), 5)
    assert set(threads) == {10, 11}
    assert threads[10].holds == [(100_000_003_000, 100_000_103_000), (100_000_200_000, 100_000_500_000)]
    assert [b - a for a, b in threads[10].waits] == [2_000]
    assert [b - a for a, b in threads[11].waits] == [90_500] and [b - a for a, b in threads[11].holds] == [40_000]


def test_time_switched_out_is_taken_off_a_hold() -> None:
    away = parse_switches(_SCHED.splitlines(), 5)
    assert away == {10: [(100_000_050_000, 100_000_080_000)]}
    assert on_cpu(parse_events(_GIL.splitlines(), 5)[10].holds, away[10]) == [70_000, 300_000]
    assert on_cpu([(0, 10), (20, 30)], [(5, 25)]) == [5, 5]  # one interval across two holds


def test_the_window_keeps_only_what_started_in_it() -> None:
    threads = parse_events(_GIL.splitlines(), 5)
    away = parse_switches(_SCHED.splitlines(), 5)
    got = summarize(threads, {10: "coordinator-sender-r0", 11: "MainThread"}, away, (100_000_000_000, 100_000_150_000))
    sender, main = got["threads"]["coordinator-sender-r0"], got["threads"]["MainThread"]
    assert sender["holds"] == 1 and sender["hold_max_us"] == 100.0 and sender["cpu_hold_max_us"] == 70.0
    assert main["wait_max_us"] == 90.5 and main["waits_over_50us"] == 1
    assert main["cpu_hold_max_us"] == 40.0  # never switched out: its whole hold was on the CPU


def test_the_run_takes_the_default_rings_unless_asked_for_the_socket() -> None:
    """Without ``--socket`` the run sets nothing about rings (the library's default and ``COORDINATOR_RINGS``
    decide); with it, ``rings=False``, which overrides the environment."""
    default = run_settings({"dir": "/tmp/x", "socket": False})
    assert "rings" not in default.explicit() and default.rings is Settings().rings
    socket = run_settings({"dir": "/tmp/x", "socket": True})
    assert socket.explicit()["rings"] is False
    assert Settings.resolve(socket, environ={"COORDINATOR_RINGS": "1"}).rings is False
    assert Settings.resolve(default, environ={"COORDINATOR_RINGS": "0"}).rings is False
    assert Settings.resolve(default, environ={}).rings is Settings().rings
