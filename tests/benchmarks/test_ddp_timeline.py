"""The DDP timeline: steps split by the logging turns that overlap them, turns recorded per thread, a real job."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from benchmarks import ddp_timeline
from benchmarks.ddp_timeline import Turn, analyse, install, measure, report


def _block(variant: str, t0: float, durations: list[list[float]]) -> list[dict[str, Any]]:
    """One block as each rank writes it: steps back to back from ``t0``, rank r's times ``durations[r]``."""
    starts, t = [], t0
    for step in zip(*durations, strict=True):
        starts.append(t)
        t += max(step)  # the next step starts when the slowest rank is done, as under DDP
    return [{"variant": variant, "starts": starts, "times": times} for times in durations]


def _ranks(blocks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"rank": r, "blocks": [b[r] for b in blocks]} for r in range(len(blocks[0]))]


def test_steps_are_split_by_the_turns_that_overlap_them_and_the_slowdown_with_them() -> None:
    base = _block("none", 0.0, [[0.010] * 4, [0.010] * 4])
    # The logged block: steps of 10 ms, but the second is 14 ms on rank 1 (the step takes the slowest rank's).
    logged = _block("coordinator", 10.0, [[0.010] * 4, [0.010, 0.014, 0.010, 0.010]])
    turns = [
        Turn(10.0105, 10.0115, 1_500_000, "sender"),  # inside step 2 (10.010-10.024)
        Turn(10.0120, 10.0125, 500_000, "aggregator"),  # inside step 2 too
        Turn(5.0, 5.001, 9_000_000, "sender"),  # between the blocks: no step's
    ]
    rows = analyse(_ranks([base, logged]), turns)
    none, got = rows["none"], rows["coordinator"]
    assert none["touched_share"] == 0 and none["step_ms"] == pytest.approx(10.0)
    assert got["steps"] == 4 and got["touched_share"] == pytest.approx(0.25)
    assert got["touched_ms"] == pytest.approx(14.0) and got["untouched_ms"] == pytest.approx(10.0)
    assert got["baseline_touched_ms"] == pytest.approx(10.0) and got["baseline_untouched_ms"] == pytest.approx(10.0)
    assert got["slowdown"] == pytest.approx(0.1)  # (10 + 14 + 10 + 10) / 4 = 11 ms against 10
    assert got["from_touched"] == pytest.approx(0.1) and got["from_untouched"] == pytest.approx(0.0)
    assert got["extra_ms_per_touched"] == pytest.approx(4.0)
    assert got["cpu_ms_per_touched"] == pytest.approx(2.0)
    assert got["both_share"] == pytest.approx(1.0)
    text = report(rows)
    assert "touched 25%" in text and "4.00 ms extra for 2.00 ms of CPU" in text and "no turn in any step" in text


def test_a_touched_step_is_set_against_the_baseline_steps_the_same_turns_would_have_touched() -> None:
    """Long steps catch more turns: the baseline's step under the moved turn is long too, and it is
    the comparison, not the baseline's mean."""
    base = _block("none", 0.0, [[0.010, 0.016, 0.010, 0.010]])
    logged = _block("coordinator", 10.0, [[0.010, 0.018, 0.010, 0.010]])
    turn = Turn(10.012, 10.013, 1_000_000, "sender")  # in the logged block's second step; moved, in the baseline's
    got = analyse(_ranks([base, logged]), [turn])["coordinator"]
    assert got["touched_ms"] == pytest.approx(18.0) and got["baseline_touched_ms"] == pytest.approx(16.0)
    assert got["extra_ms_per_touched"] == pytest.approx(2.0), "18 against 16, not against the mean of 11.5"
    assert got["untouched_ms"] == pytest.approx(10.0) and got["baseline_untouched_ms"] == pytest.approx(10.0)
    assert got["from_touched"] == pytest.approx(0.25 * 2.0 / 11.5) and got["from_untouched"] == pytest.approx(0.0)


def test_a_warm_variant_is_set_against_the_warm_baseline() -> None:
    blocks = [
        _block("none", 0.0, [[0.010] * 2]),
        _block("none+wake5ms", 1.0, [[0.008] * 2]),
        _block("coordinator+wake5ms", 2.0, [[0.010] * 2]),
    ]
    got = analyse(_ranks(blocks), [])["coordinator+wake5ms"]
    assert got["baseline"] == "none+wake5ms" and got["slowdown"] == pytest.approx(0.25)
    assert got["from_untouched"] == pytest.approx(0.25) and got["from_touched"] == 0.0


def test_records_that_do_not_line_up_are_refused() -> None:
    a = {"rank": 0, "blocks": _block("none", 0.0, [[0.01]])}
    b = {"rank": 1, "blocks": _block("none", 0.0, [[0.01]]) * 2}
    with pytest.raises(ValueError, match="numbers of blocks"):
        analyse([a, b], [])
    c = {"rank": 1, "blocks": _block("coordinator", 0.0, [[0.01]])}
    with pytest.raises(ValueError, match="different variants"):
        analyse([a, c], [])
    with pytest.raises(ValueError, match="no rank"):
        analyse([], [])


class _Waiter:
    def wait(self, seconds: float) -> None:
        threading.Event().wait(seconds)


def test_a_turn_runs_from_one_wait_to_the_next_of_the_same_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new thread's first wait makes no turn, even where it got an ended thread's identifier."""
    monkeypatch.setattr(_Waiter, "wait", _Waiter.wait)
    monkeypatch.setattr(ddp_timeline, "_TURNS", [])
    ddp_timeline._record_turns(__name__, "_Waiter.wait", lambda: threading.current_thread().name.startswith("rec"))

    def waits(n: int) -> None:
        w = _Waiter()
        for _ in range(n):
            w.wait(0.001)
            sum(range(20_000))  # the turn: some CPU between two waits

    for i in range(3):  # one after the other: identifiers get reused
        t = threading.Thread(target=waits, args=(3,), name=f"rec-{i}")
        t.start()
        t.join(10)
        assert not t.is_alive()
    _Waiter().wait(0.001)  # not a recorded thread
    turns = ddp_timeline._TURNS
    assert len(turns) == 3 * 2  # three waits a thread: two turns between them
    assert all(0 < end - start < 1.0 and cpu > 0 for start, end, cpu in turns)


def test_a_process_that_is_neither_rank_nor_aggregator_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from coordinator.transport.loopio import LoopIO

    before = LoopIO.wait
    monkeypatch.setenv("DDP_TIMELINE_OUT", str(tmp_path))
    monkeypatch.setattr(ddp_timeline, "_ROLE", [])
    install()  # this is pytest: its command line names neither
    ddp_timeline.dump()
    assert LoopIO.wait is before
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
@pytest.mark.multiprocess
def test_a_two_rank_job_records_every_step_and_its_senders_and_aggregators_turns(tmp_path: Path) -> None:
    rows = measure(["coordinator"], steps=60, repeats=1, keep=tmp_path, ranks=2, timeout_s=240)
    assert rows["none"]["steps"] == 60 and rows["coordinator"]["steps"] == 60
    assert rows["none"]["touched_share"] == 0
    # 60 steps of a few ms: some step had a turn of a sender's or of the aggregator's, which reads the rings
    # before its commits (or, with COORDINATOR_RINGS=0, the batches each rank flushes every 50 ms).
    assert 0 < rows["coordinator"]["touched_share"] <= 1
    assert rows["coordinator"]["cpu_ms_per_touched"] > 0
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names[:2] == ["rank0.json", "rank1.json"]
    assert "turns-sender-r0.json" in names and "turns-sender-r1.json" in names
    assert any(n.startswith("turns-aggregator-") for n in names)
