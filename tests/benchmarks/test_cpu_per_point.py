"""Section 7's direct measurement: the CPU of coordinator's own threads in a rank, and its sum per point."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import coordinator
from benchmarks.common import INCONCLUSIVE
from benchmarks.cpu_per_point import block_settings, own_threads_cpu, summarise, threads_cpu, used
from benchmarks.report_cpu import cpu_markdown, cpu_targets


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_own_threads_are_the_runs_threads_and_pyzmqs_with_the_cpu_they_used(store_dir: Path) -> None:
    """A real run's sender and pyzmq's I/O thread are read; a thread of the user's, busy meanwhile, is not."""
    busy = threading.Thread(target=_spin, args=(0.3,), name="user-work")
    with coordinator.init_run(project="t") as run:
        before = own_threads_cpu()
        busy.start()
        for s in range(20_000):
            run.log({"a": float(s), "b": float(s)}, step=s)
        run.wait(30)
        busy.join(10)
        after = own_threads_cpu()
        sender = run._sender
        assert sender is not None and sender.native_id in after
        assert busy.native_id not in after and threading.get_native_id() not in after
        zmq_threads = set(after) - {t.native_id for t in threading.enumerate()}
        assert zmq_threads, "no ZMQbg thread found"
        assert after[sender.native_id] > before.get(sender.native_id, 0.0)  # it sent 40,000 points meanwhile
        assert all(after[t] >= before.get(t, 0.0) for t in after)


def _block(total: float, aggregator: float, threads: float, calls: float, points: float = 200_000.0) -> dict[str, Any]:
    cpu = {"total": total, "rank": total - aggregator, "aggregator": aggregator, "agent": 0.0, "other": 0.0}
    direct = {"threads_s": threads, "log_calls_s": calls}
    return {"cpu": cpu, "wall_s": 10.0, "points": points, "late": 0.0, "direct": direct}


def test_the_direct_figure_sums_the_aggregator_the_ranks_threads_and_the_log_calls_per_repeat() -> None:
    none = [_block(5.0, 0.0, 0.0, 0.0, points=0.0) for _ in range(3)]
    coord = [_block(5.3, 0.2, 0.06, 0.04), _block(5.1, 0.22, 0.08, 0.04), _block(5.2, 0.18, 0.06, 0.02)]
    s = summarise({"results": {"none": none, "coordinator": coord}})
    assert s["direct_us_all"] == pytest.approx([1.5, 1.7, 1.3])  # (0.2 + 0.06 + 0.04) s / 200,000 points
    assert s["direct_us"] == pytest.approx(1.5)
    assert s["direct_by_part_us"] == pytest.approx({"aggregator": 1.0, "rank_threads": 0.3, "log_calls": 0.2})
    s.update(command="cmd", seconds=10.0, repeats=3)
    assert "Measured directly in the same windows: **1.50 µs** a point" in cpu_markdown(s)
    s.update(us_paired=1.0, us_paired_ci=[0.5, 1.5])  # the whole job's interval holds the goal: inconclusive
    [(_, measured, status)] = [r for r in cpu_targets({"cpu": s}) if r[0].startswith("CPU per logged point")]
    assert measured.endswith("measured directly: 1.50 µs")
    assert status is False  # every direct repeat is above the 1 µs goal
    s.update(direct_us_all=[1.5, 0.9, 1.3])  # one direct repeat below it: the interval decides
    assert next(r for r in cpu_targets({"cpu": s}) if r[0].startswith("CPU per logged point"))[2] == INCONCLUSIVE


def test_the_socket_blocks_are_summarised_apart_and_reported_as_a_target_of_their_own() -> None:
    """With ``--also-socket`` the job's third variant (``rings=False``) is summarised against the same unlogged
    blocks as the default's, and the report gives it its own paragraph and row of the targets table."""
    none = [_block(5.0, 0.0, 0.0, 0.0, points=0.0) for _ in range(3)]
    coord = [_block(5.1, 0.05, 0.01, 0.04), _block(5.1, 0.06, 0.0, 0.04), _block(5.1, 0.04, 0.02, 0.04)]
    socket = [_block(5.3, 0.2, 0.06, 0.04) for _ in range(3)]
    raw = {"results": {"none": none, "coordinator": coord, "socket": socket}}
    s = summarise(raw)
    s.update(command="cmd", seconds=10.0, repeats=3, socket=summarise(raw, "socket"))
    assert s["direct_us"] == pytest.approx(0.5) and s["socket"]["direct_us"] == pytest.approx(1.5)
    assert s["us_per_point"] == pytest.approx(0.5)  # (5.1 - 5.0) core-s/s x 10 s / 200,000 points
    assert s["socket"]["us_per_point"] == pytest.approx(1.5)
    text = cpu_markdown(s)
    assert "Over the socket (`rings=False`" in text and "**1.50 µs** a point measured directly" in text
    assert "Settings.rings" not in text
    rows = {r[0]: r for r in cpu_targets({"cpu": s}) if r[0].startswith("CPU per logged point")}
    assert len(rows) == 2
    [default_row] = [r for t, r in rows.items() if t.endswith("4 ranks: <= 1 µs")]
    [socket_row] = [r for t, r in rows.items() if t.endswith("over the socket (`rings=False`)")]
    assert default_row[1].endswith("measured directly: 0.50 µs")
    assert default_row[2] is True  # every paired repeat is 0.5 µs: the interval is under the goal
    assert socket_row[1].endswith("measured directly: 1.50 µs")
    assert socket_row[2] is False  # every paired repeat is 1.5 µs: over the goal


def test_a_result_file_with_a_rings_variant_reports_no_row_for_it() -> None:
    """Section 7 of a run from before rings were the default measured ``rings`` as its extra variant; that
    summary is not the socket's and is not shown as one (nor as anything else)."""
    none = [_block(5.0, 0.0, 0.0, 0.0, points=0.0) for _ in range(3)]
    coord = [_block(5.3, 0.2, 0.06, 0.04) for _ in range(3)]
    raw = {"results": {"none": none, "coordinator": coord, "rings": coord}}
    s = summarise(raw)
    s.update(command="cmd", seconds=10.0, repeats=3, rings=summarise(raw, "rings"))
    assert len([r for r in cpu_targets({"cpu": s}) if r[0].startswith("CPU per logged point")]) == 1
    assert "socket" not in cpu_markdown(s)


def test_the_coordinator_blocks_take_the_default_and_the_socket_blocks_set_rings_off() -> None:
    """``coordinator`` leaves ``rings`` to the library's default and the environment (``Settings(rings=True)``
    would be the same thing); ``socket`` blocks, and every block with ``--socket``, set ``rings=False``, which
    overrides ``COORDINATOR_RINGS``."""
    assert block_settings("coordinator") == {}
    assert block_settings("socket") == {"rings": False}
    assert block_settings("coordinator", socket=True) == {"rings": False}
    assert block_settings("socket", 0.5) == {"flush_interval_s": 0.5, "rings": False}
    assert block_settings("coordinator", 0.5) == {"flush_interval_s": 0.5}
    for bad in ("rings", "none", "coordinator-socket"):
        with pytest.raises(ValueError, match="not coordinator or socket"):
            block_settings(bad)


def test_blocks_from_before_the_direct_figure_summarise_without_it() -> None:
    old = [{k: v for k, v in _block(5.2, 0.2, 0.0, 0.0).items() if k != "direct"} for _ in range(2)]
    s = summarise({"results": {"none": old, "coordinator": old}})
    assert "direct_us" not in s and s["us_per_point"] == pytest.approx(0.0)


def test_a_processs_threads_are_read_in_nanoseconds_and_a_gone_process_reads_empty() -> None:
    """The aggregator's share is read per thread (``schedstat``), finer than a process's 10 ms ticks."""
    a = threads_cpu()
    _spin(0.003)
    b = threads_cpu()
    me = threading.get_native_id()
    assert 0.003 <= b[me] - a[me] < 0.5 and used(a, b) >= 0.003
    assert threads_cpu(2**22 + 1) == {}  # past pid_max's ceiling: no such process
