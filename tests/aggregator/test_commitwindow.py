"""The group commit window: 100 ms at a light load, 50 ms once it read 256 KiB, 10 ms while a non-ACK reply is due."""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator import Aggregator
from coordinator.aggregator.commitwindow import (
    BUSY_WINDOW_S,
    LIGHT_BYTES,
    LIGHT_EARLY_S,
    LIGHT_WINDOW_S,
    STRAGGLE_S,
    URGENT_WINDOW_S,
    CommitWindow,
)
from coordinator.aggregator.server import Server
from coordinator.transport import wire
from tests.aggregator.helpers import RUN, make_cfg, payload


def test_a_light_window_is_long_a_busy_one_shorter_and_an_urgent_one_shortest() -> None:
    w = CommitWindow()
    w.committed(100.0)
    assert w.length == LIGHT_WINDOW_S == 0.1
    assert w.open_at(100.099) and not w.open_at(100.101)
    w.bytes += LIGHT_BYTES - 1
    assert w.length == LIGHT_WINDOW_S
    w.bytes += 1
    assert w.length == BUSY_WINDOW_S == 0.05
    assert w.open_at(100.049) and not w.open_at(100.051)
    w.urgent = True
    assert w.length == URGENT_WINDOW_S == 0.01
    assert w.open_at(100.009) and not w.open_at(100.011)


def test_a_batch_read_late_in_a_light_window_closes_it_in_that_round() -> None:
    """The ranks' flush after next (about 100 ms after a commit, on their 50 ms grid) arrives a
    moment before the window's end: it commits in the round that read it, not a wake-up later."""

    def window() -> CommitWindow:
        w = CommitWindow()
        w.committed(100.0)
        return w

    w = window()
    assert LIGHT_EARLY_S == 0.075
    assert w.open_at(100.074, read=True), "the next flush (50 ms on) waits for the one after"
    assert not w.open_at(100.076, read=True), "the flush after next closes the window"
    assert window().open_at(100.076), "a round that read no batch (a timeout, a reply) keeps the full 100 ms"
    w = window()
    w.urgent = True
    assert not w.open_at(100.076, read=True), "an urgent window ended at 10 ms anyway"


def _learned(senders: tuple[str, ...], at: float) -> CommitWindow:
    """A window whose last commit took a whole flush of ``senders`` at ``at`` (nothing expected before it)."""
    w = CommitWindow()
    w.committed(at - 1.0)
    for s in senders:
        w.read_from(s)
    assert not w.open_at(at, read=True), "nobody expected yet: a late batch commits at once"
    w.committed(at)
    return w


def test_a_late_batch_waits_for_the_rest_of_its_flush_and_commits_on_the_round_that_reads_the_last() -> None:
    """With a flush interval past the window (500 ms here) the first batch of a flush would commit
    alone and the others wait 100 ms for a commit of their own; it waits for them instead."""
    assert STRAGGLE_S == 0.01
    w = _learned(("r0", "r1", "r2"), 10.0)
    w.read_from("r1")
    assert w.open_at(10.5, read=True), "r0 and r2 of this flush are still to come"
    assert w.timeout_ms(10.5) == 10, "the poll waits for them, though the window's 100 ms are long over"
    w.read_from("r0")
    assert w.open_at(10.502, read=True)
    w.read_from("r2")
    assert not w.open_at(10.503, read=True), "the whole flush is in: commit in this round"


def test_a_flush_that_does_not_come_whole_commits_at_the_deadline_and_is_expected_smaller_after() -> None:
    w = _learned(("r0", "r1"), 10.0)
    w.read_from("r0")
    assert w.open_at(10.5, read=True)
    assert w.open_at(10.5 + STRAGGLE_S - 0.0005), "a timeout before the deadline keeps waiting"
    assert not w.open_at(10.5 + STRAGGLE_S), "r1 stopped flushing: commit without it"
    w.committed(10.51)
    w.read_from("r0")
    assert not w.open_at(11.0, read=True), "the next flush is r0's alone: no wait"


def test_at_the_50_ms_grid_the_flush_after_next_commits_at_once_and_its_rest_rides_on_the_next_window() -> None:
    """Waiting there would wake the loop once per late batch, for no commit saved."""
    w = _learned(("r0", "r1"), 10.0)
    w.read_from("r0")
    w.read_from("r1")
    assert w.open_at(10.05, read=True), "the next flush waits for the one after"
    w.read_from("r1")
    assert not w.open_at(10.098, read=True), "the flush after next, inside the window: commit now"


def test_the_batches_of_an_earlier_round_do_not_count_for_the_flush_a_commit_waits_for() -> None:
    w = _learned(("r0", "r1"), 10.0)
    w.read_from("r0")
    w.read_from("r1")
    assert w.open_at(10.05, read=True)
    w.read_from("r1")
    assert w.open_at(10.2, read=True), "the loop was late to the window's end: r0's batch of this flush is to come"
    w.read_from("r0")
    assert not w.open_at(10.201, read=True)


def test_a_reply_that_becomes_due_ends_the_wait_for_the_flush() -> None:
    w = _learned(("r0", "r1"), 10.0)
    w.read_from("r0")
    assert w.open_at(10.5, read=True)
    w.urgent = True
    assert w.timeout_ms(10.5) == 0, "an urgent window ended 10 ms after the last commit"
    assert not w.open_at(10.501), "a query, sync() or wait() does not wait for the flush"


def test_a_commit_opens_a_new_light_window() -> None:
    w = CommitWindow()
    w.bytes = 10 * LIGHT_BYTES
    w.committed(5.0)
    assert (w.opened, w.bytes, w.length) == (5.0, 0, LIGHT_WINDOW_S)
    assert w.open_at(5.05), "a window without its bytes is light again"


def test_the_poll_timeout_runs_to_the_windows_end_rounded_up_and_never_below_zero() -> None:
    w = CommitWindow()
    w.committed(10.0)
    assert w.timeout_ms(10.0) == 100
    assert w.timeout_ms(10.0991) == 1, "0.9 ms left: a 0 ms poll would spin"
    assert w.timeout_ms(10.2) == 0
    assert CommitWindow().timeout_ms(1e6) == 0, "no commit yet: the first batch is committed at once"


def _server(tmp_path: Path) -> Server:
    return Server(Aggregator(make_cfg(tmp_path, world=1)), f"ipc://{tmp_path}/agg.sock")


def _send(srv: Server, kind: int, seq: int, body: bytes) -> None:
    srv.handle([b"rank-0", wire.encode_envelope(kind, RUN, 0, 1, seq), body], 1.0)


def test_only_acks_due_keep_the_window_light_and_a_ping_makes_it_urgent_until_the_replies_leave(
    tmp_path: Path,
) -> None:
    """A rank waiting for its acks hurries with a PING behind its batch; the ACK and the PONG then leave
    after the 10 ms window's commit, and the next window is light again."""
    srv = _server(tmp_path)
    try:
        _send(srv, wire.HELLO, 1, wire.encode_map({"pid": 100, "host": "h"}))
        assert srv.window.urgent, "a WELCOME is due"
        srv.agg.commit()
        srv._fill_reads()
        srv._flush_replies()
        assert not srv.window.urgent
        _send(srv, wire.BATCH, 1, payload({"m": {1: 1.0}}))
        assert [r[1] for r in srv.replies] == [wire.ACK]
        assert srv.window.length == LIGHT_WINDOW_S, "only an ACK is due"
        _send(srv, wire.PING, 0, wire.encode_map({}))
        assert srv.window.urgent and srv.window.length == URGENT_WINDOW_S
        srv.agg.commit()
        srv._fill_reads()
        assert [(kind, body.get("m")) for _, kind, _, body in srv.replies] == [(wire.ACK, 1), (wire.PONG, 1)]
        srv._flush_replies()
        assert not srv.window.urgent and srv.window.length == LIGHT_WINDOW_S
    finally:
        srv.close()
        srv.agg.store.close()


def test_the_server_tells_the_window_whose_batch_it_read(tmp_path: Path) -> None:
    """Two ranks flush; after one commit took both, a late batch of one waits for the other's."""
    srv = Server(Aggregator(make_cfg(tmp_path, world=2)), f"ipc://{tmp_path}/agg.sock")

    def send(rank: int, kind: int, seq: int, body: bytes) -> None:
        srv.handle([f"rank-{rank}".encode(), wire.encode_envelope(kind, RUN, rank, 1, seq), body], 1.0)

    try:
        for rank in (0, 1):
            send(rank, wire.HELLO, 1, wire.encode_map({"pid": 100 + rank, "host": "h"}))
        srv.agg.commit()
        srv._flush_replies()
        w = srv.window
        w.committed(10.0)
        for rank in (0, 1):
            send(rank, wire.BATCH, 1, payload({"m": {1: 1.0}}))
        assert not w.open_at(10.5, read=True)
        w.committed(10.5)
        send(0, wire.BATCH, 2, payload({"m": {2: 2.0}}))
        assert w.open_at(11.0, read=True), "rank 1's batch of this flush is still to come"
        send(1, wire.BATCH, 2, payload({"m": {2: 2.0}}))
        assert not w.open_at(11.001, read=True)
    finally:
        srv.close()
        srv.agg.store.close()


def test_a_window_that_read_256_kib_commits_at_50_ms(tmp_path: Path) -> None:
    """The bytes a round reads count toward its window: a busy run's acks do not wait 100 ms."""
    import zmq

    srv = _server(tmp_path)
    client = srv.ctx.socket(zmq.DEALER)
    try:
        client.connect(srv.endpoint)
        big = payload({f"k{i}": {s: float(s) for s in range(100)} for i in range(200)})  # 320 KB of points
        assert len(big) > LIGHT_BYTES
        client.send_multipart([wire.encode_envelope(wire.HELLO, RUN, 0, 1, 1), wire.encode_map({"pid": 1})])
        client.send_multipart([wire.encode_envelope(wire.BATCH, RUN, 0, 1, 1), big])
        taken = 0
        while taken < len(big):
            assert srv.sock.poll(10_000), "the batch did not arrive"
            taken += srv._receive_round(1.0)
        assert srv.window.bytes == taken
        assert srv.window.length == URGENT_WINDOW_S, "the WELCOME is due"
        srv.window.urgent = False
        assert srv.window.length == BUSY_WINDOW_S
    finally:
        client.close(linger=0)
        srv.close()
        srv.agg.store.close()
