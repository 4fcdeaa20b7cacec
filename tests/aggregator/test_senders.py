"""The sender registry: handshake, exactly-once batches, fencing of replaced incarnations, restart."""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregator import Aggregator
from coordinator.aggregator.senders import _MAX_PENDING_BLOCKS, LastSteps
from coordinator.errors import ProtocolError
from coordinator.transport import wire
from tests.aggregator.helpers import RUN, batch, bye, crash, env, hello, make_cfg, payload, reopen


def test_hello_returns_high_water_mark_and_protocol(agg: Aggregator) -> None:
    """WELCOME carries last_seq 0 for a new sender, the run id and the protocol."""
    assert hello(agg, 0) == {"last_seq": 0, "run_id": RUN, "protocol": wire.PROTOCOL}


@pytest.mark.parametrize(("run", "rank", "code"), [("other-run", 0, "wrong_run"), (RUN, 2, "bad_rank")])
def test_hello_refuses_wrong_run_or_rank_outside_world(agg: Aggregator, run: str, rank: int, code: str) -> None:
    """A HELLO for another run or a rank >= world size is refused with its code."""
    with pytest.raises(ProtocolError) as ei:
        agg.hello(env(wire.HELLO, rank, 1, 0, run=run), {}, 1.0)
    assert ei.value.code == code
    assert agg.senders == {}


def test_batches_are_ingested_once_and_duplicates_dropped(agg: Aggregator, tmp_path: Path) -> None:
    """seq 1, 2 are new; a resent seq 1 is a duplicate that stores nothing."""
    hello(agg, 0)
    assert batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}}) == "new"
    assert batch(agg, 0, 2, metrics={"loss": {2: 3.0}}) == "new"
    assert batch(agg, 0, 1, metrics={"loss": {0: 1.0, 1: 2.0}}) == "duplicate"
    agg.commit()
    assert batch(agg, 0, 2, metrics={"loss": {2: 3.0}}) == "duplicate"
    agg.commit()
    assert agg.counters["duplicate_batches"] == 2
    assert (agg.counters["batches"], agg.counters["points"]) == (2, 3)
    s = reopen(tmp_path)
    try:
        assert s.values("loss", 0) == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert s.high_water_marks() == {(0, 1): 2}
        assert s.key_policies() == {"loss": "mean"}
    finally:
        s.close()


def test_sequence_gap_is_refused_and_nothing_ingested(agg: Aggregator) -> None:
    """seq 5 after 2 raises code 'gap'; the sender stays at 2 and seq 3 is still accepted."""
    hello(agg, 0)
    batch(agg, 0, 1, metrics={"k": {0: 1.0}})
    batch(agg, 0, 2, metrics={"k": {1: 1.0}})
    with pytest.raises(ProtocolError) as ei:
        batch(agg, 0, 5, metrics={"k": {9: 9.0}})
    assert ei.value.code == "gap" and "expected 3" in str(ei.value)
    assert agg.counters["gaps"] == 1 and agg.counters["points"] == 2
    assert agg.senders[(0, 1)].last_seq == 2
    assert batch(agg, 0, 3, metrics={"k": {2: 1.0}}) == "new"


@pytest.mark.parametrize(("run", "code"), [(RUN, "hello"), ("other-run", "wrong_run")])
def test_batch_before_hello_is_refused(agg: Aggregator, run: str, code: str) -> None:
    """A batch from a sender that never said HELLO gets code 'hello'; one for another run 'wrong_run'."""
    if run != RUN:
        hello(agg, 0)
    with pytest.raises(ProtocolError) as ei:
        agg.batch(env(wire.BATCH, 0, 1, 1, run=run), payload(metrics={"k": {0: 1.0}}), 1.0)
    assert ei.value.code == code
    assert agg.counters["points"] == 0 and agg.txn.chunks == []


def test_bad_payload_is_refused_and_the_seq_can_be_resent(agg: Aggregator) -> None:
    """A malformed payload raises ProtocolError, is counted, and does not advance the sender."""
    hello(agg, 0)
    with pytest.raises(ProtocolError):
        agg.batch(env(wire.BATCH, 0, 1, 1), b"\xc1garbage", 1.0)
    assert agg.counters["bad_frames"] == 1 and agg.senders[(0, 1)].last_seq == 0
    assert batch(agg, 0, 1, metrics={"k": {0: 1.0}}) == "new"


def test_new_incarnation_fences_the_old_one(agg: Aggregator, tmp_path: Path) -> None:
    """After a new incarnation's HELLO, the old one's batches, HELLO and BYE are code 'fenced'."""
    hello(agg, 0, inc=1)
    batch(agg, 0, 1, inc=1, metrics={"k": {0: 1.0}})
    assert hello(agg, 0, inc=2)["last_seq"] == 0
    for call in (
        lambda: batch(agg, 0, 2, inc=1, metrics={"k": {1: 1.0}}),
        lambda: hello(agg, 0, inc=1),
        lambda: bye(agg, 0, inc=1),
    ):
        with pytest.raises(ProtocolError) as ei:
            call()
        assert ei.value.code == "fenced"
    assert agg.counters["fenced_batches"] == 2  # the batch and the bye
    assert batch(agg, 0, 1, inc=2, metrics={"k": {1: 2.0}}) == "new"
    agg.commit()
    states = {(s["rank"], s["incarnation"]): s["state"] for s in agg.store.senders()}
    assert states == {(0, 1): "fenced", (0, 2): "live"}
    assert agg.store.values("k", 0) == [(0, 1.0), (1, 2.0)]
    assert [e[1] for e in agg.store.events()].count("rank_restarted") == 1


def test_new_incarnation_fences_an_old_one_that_was_lost(tmp_path: Path) -> None:
    """A lost incarnation that comes back after its replacement said HELLO is fenced too."""
    a = Aggregator(make_cfg(tmp_path, world=1, liveness_timeout_s=5.0))
    hello(a, 0, inc=1, now=0.0)
    batch(a, 0, 1, inc=1, now=0.0, metrics={"k": {0: 1.0}})
    a.senders[(0, 1)].heard -= 10.0  # silent for 10 s (liveness runs on time.monotonic)
    a.check_liveness(10.0)
    assert a.rank_state[0] == "lost"
    hello(a, 0, inc=2, now=11.0)
    with pytest.raises(ProtocolError) as ei:
        batch(a, 0, 2, inc=1, now=12.0, metrics={"k": {1: 99.0}})
    assert ei.value.code == "fenced"
    a.touch(env(wire.PING, 0, 1, 0), 12.0)
    assert a.rank_state[0] == "live" and a.current[0] == 2


def test_restart_restores_high_water_marks(tmp_path: Path) -> None:
    """A second Aggregator on the same store treats resent batches as duplicates."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    batch(a, 0, 1, metrics={"k": {0: 1.0}})
    batch(a, 0, 2, metrics={"k": {1: 2.0}})
    a.commit()
    batch(a, 0, 3, metrics={"k": {2: 3.0}})  # never committed: lost in the crash
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    assert batch(b, 0, 1, metrics={"k": {0: 1.0}}) == "duplicate"  # known sender, even before HELLO
    assert hello(b, 0)["last_seq"] == 2
    assert batch(b, 0, 2, metrics={"k": {1: 2.0}}) == "duplicate"
    assert batch(b, 0, 3, metrics={"k": {2: 3.0}}) == "new"
    b.commit()
    assert b.store.values("k", 0) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert b.store.run_info().state == "running"


def test_restart_keeps_fenced_incarnations_fenced(tmp_path: Path) -> None:
    """An incarnation fenced before a restart is still refused after it."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0, inc=1)
    hello(a, 0, inc=2)
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path))
    with pytest.raises(ProtocolError) as ei:
        hello(b, 0, inc=1)
    assert ei.value.code == "fenced"


@pytest.mark.parametrize("restart", [True, False])
def test_a_rank_0_that_closed_ends_a_restarted_aggregator_but_not_a_resuming_job(tmp_path: Path, restart: bool) -> None:
    """Restored "rank 0 closed" drains and ends a replacement aggregator of the same job; the first
    aggregator of a job resuming the run waits for that job's rank 0 (its HELLO had not arrived)."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    assert batch(a, 0, 1, metrics={"loss": {0: 1.0}}) == "new"
    bye(a, 0)
    a.commit()
    crash(a)
    a.close()  # the first aggregator dies; its writer lock goes with it
    b = Aggregator(make_cfg(tmp_path, world=1, restart=restart))
    assert b.finished(2.0) is restart
    if not restart:
        hello(b, 0, inc=2)
        assert not b.finished(2.5)
        bye(b, 0, inc=2, now=3.0)
        b.commit()
        assert b.finished(3.0)
    b.close()


def test_last_steps_of_blocks_and_keys_keep_the_latest_note_of_each_key() -> None:
    """Block notes are spread over their keys only when read; the order of all notes decides."""
    book = LastSteps()
    book.note_block(("a", "b"), 3)
    book.note("b", 5)  # after the block: wins for b
    book.note_block(("b", "c"), 4)  # after that: wins for b and c
    book.note_block(("a", "b"), 6)  # the first tuple again, now the latest
    assert book.snapshot() == {"a": 6, "b": 6, "c": 4}
    book.note_block(("b", "c"), 7)
    assert book.snapshot() == {"a": 6, "b": 7, "c": 7}
    snap = book.snapshot()
    snap["a"] = 0  # a copy
    assert book.snapshot()["a"] == 6


def test_last_steps_spreads_its_pending_blocks_past_the_bound() -> None:
    book = LastSteps()
    tuples = [(f"k{i}", f"k{i + 1}") for i in range(_MAX_PENDING_BLOCKS * 3)]
    for i, keys in enumerate(tuples):
        book.note_block(keys, i)
        assert len(book._blocks) <= _MAX_PENDING_BLOCKS
    want = {f"k{i}": i for i in range(len(tuples))} | {f"k{len(tuples)}": len(tuples) - 1}
    want["k0"] = 0
    assert book.snapshot() == want


def test_welcome_gives_the_last_step_of_every_key_of_a_logged_dict(tmp_path: Path) -> None:
    """A rank that logged dicts (blocks) comes back: its WELCOME names each key's last step."""
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    keys = ("m/a", "m/b", "m/c")
    for seq, steps in ((1, [0, 1]), (2, [2, 3, 4])):
        values = np.arange(len(steps) * len(keys), dtype="<f8")  # step-major
        body = wire.encode_chunks([], [], 1.0, None, [(keys, array("q", steps).tobytes(), values.tobytes())])
        assert a.batch(env(wire.BATCH, 0, 1, seq), body, 1.0) == "new"
    batch(a, 0, 3, metrics={"m/b": {9: 1.0}})  # the key alone, later
    assert hello(a, 0, inc=2)["last_steps"] == {"m/a": 4, "m/b": 9, "m/c": 4}
    a.close()
