"""The paced job's parts are timed inside the job's real processes: the aggregator's loop and one rank's sender."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from benchmarks import paced_parts
from benchmarks.paced_parts import AGGREGATOR_PARTS, SENDER_PARTS, install, measure


@pytest.mark.integration
@pytest.mark.multiprocess
@pytest.mark.usefixtures("socket_path")
def test_a_two_rank_job_times_its_aggregator_and_the_chosen_ranks_sender() -> None:
    text, found = measure(2.0, 2, 1, timeout_s=240)
    assert "aggregator" in text and "coordinator-sender-r1" in text  # rank_threads' own lines
    by_role = {f["role"]: f["parts"] for f in found}
    assert set(by_role) == {"aggregator", "sender-r1"}  # rank 0's sender is not timed
    agg, snd = by_role["aggregator"], by_role["sender-r1"]
    assert set(agg) == {attr for _, attr in AGGREGATOR_PARTS}
    assert set(snd) == {attr for _, attr in SENDER_PARTS}
    # 2 s at 50 steps/s, 20 flushes a second from each rank: batches and commits were timed.
    assert agg["Aggregator.batch"]["calls"] >= 40 and agg["Aggregator.batch"]["ms"] > 0
    assert agg["Aggregator.commit"]["calls"] >= 10 and agg["Aggregator.emit"]["calls"] >= 1
    assert snd["Cutter.cut"]["calls"] >= 20 and snd["LoopIO.wait"]["calls"] >= 20
    # Parts nest: a batch is handled inside the receive round that read it.
    assert agg["Server._receive_round"]["ms"] >= agg["Server.handle"]["ms"] >= agg["Aggregator.batch"]["ms"]


def test_a_process_that_is_neither_is_left_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This test process is not the aggregator nor a rank_threads rank: nothing is wrapped, nothing written."""
    monkeypatch.setenv("PACED_PARTS_OUT", str(tmp_path))
    monkeypatch.setenv("PACED_PARTS_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    from coordinator.transport.batches import Cutter

    before = Cutter.cut
    install()
    assert Cutter.cut is before
    assert not list(tmp_path.iterdir())


class _Part:
    def work(self, n: int) -> int:
        return sum(range(n))


def test_a_wrapped_part_counts_only_its_threads_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper adds CPU and a call for the chosen thread, and passes other threads' calls through."""
    monkeypatch.setattr(_Part, "work", _Part.work)  # put back after the test
    stats: dict[str, list[int]] = {}
    chosen = threading.get_ident()
    paced_parts._wrap(__name__, "_Part.work", lambda: threading.get_ident() == chosen, stats)
    assert _Part().work(100_000) == sum(range(100_000))
    other = threading.Thread(target=_Part().work, args=(100_000,))
    other.start()
    other.join(10)
    assert not other.is_alive()
    assert stats["_Part.work"][1] == 1 and stats["_Part.work"][0] > 0
