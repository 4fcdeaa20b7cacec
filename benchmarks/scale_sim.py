"""One process of simulated senders for section 6 (``python -m benchmarks.scale _sim '<json>'``).

Each simulated sender is one ZeroMQ DEALER socket that speaks the coordinator's wire protocol as
a rank's sender thread does: HELLO, numbered columnar BATCHes with a bounded window of
unacknowledged batches, BYE. The aggregator cannot tell them from real ranks.

The process itself must cost little next to the aggregator it measures: on a 2-core machine its
CPU is taken from the aggregator. So its loop does work per event, not per sender:

* acks are awaited with one ``epoll`` over the sockets' ``ZMQ_FD`` descriptors, which reports
  only the sockets that have something, instead of a ``zmq.Poller`` pass over all of them (with
  512 sockets that pass cost more than the sends and encodes together);
* a paced sender waits in a heap ordered by its next send time, an unpaced one in a queue of
  senders with room in their window: a loop turn looks only at the senders due.

``ZMQ_FD`` signals that the socket's state may have changed, not that a message is there: after
it fires, and after every send on a socket (a send processes the socket's pending commands,
which can take that signal), the socket's ``EVENTS`` is read and every queued reply received.
"""

from __future__ import annotations

import heapq
import os
import select
import socket
import sys
import time
from array import array
from collections import deque
from typing import Any

from benchmarks.workers import emit, wait_go
from coordinator.transport.loopio import has_message

__all__ = ["sim_main"]

_SEND_SLICE = 256
"""Unpaced: at most this many sends between two looks at the replies."""


class _Senders:
    """The send and ack bookkeeping of one process's simulated senders."""

    def __init__(self, cfg: dict[str, Any], by_rank: dict[int, Any], inc: dict[int, int]) -> None:
        from coordinator.transport import wire

        self.wire = wire
        self.run_id = cfg["run_id"]
        self.keys = [f"sim/m{j:02d}" for j in range(cfg["keys"])]
        self.spb: int = cfg["steps_per_batch"]
        self.batches: int = cfg["batches"]  # per sender; 0 with a duration: until the duration ends
        self.window: int = cfg["window"]
        self.by_rank = by_rank
        self.inc = inc
        ranks = list(by_rank)
        self.seq = dict.fromkeys(ranks, 0)
        self.inflight = dict.fromkeys(ranks, 0)
        self.acked_seq = dict.fromkeys(ranks, 0)  # every batch up to it is answered
        self.sent_b = dict.fromkeys(ranks, 0)
        self.total_inflight = 0
        self.acked_points = 0
        self.acked_batches = 0
        self.errors: list[str] = []
        self.lat: list[float] = []
        self.sent_at: dict[tuple[int, int], float] = {}
        self.t_last_ack = 0.0
        self.ts = time.time()

    def send(self, r: int, now: float) -> None:
        """One batch from sender ``r``: fresh steps, value = step * 8 + rank (what the store check expects)."""
        wire = self.wire
        s0 = self.sent_b[r] * self.spb
        st = array("q", range(s0, s0 + self.spb))
        vals = array("d", [s * 8.0 + r for s in st])
        payload = wire.encode_batch([(k, st, vals) for k in self.keys], [], self.ts)
        self.seq[r] += 1
        self.by_rank[r].send_multipart(
            [wire.encode_envelope(wire.BATCH, self.run_id, r, self.inc[r], self.seq[r]), payload], copy=False
        )
        self.sent_at[(r, self.seq[r])] = now
        self.sent_b[r] += 1
        self.inflight[r] += 1
        self.total_inflight += 1

    def drain(self, r: int) -> int:
        """Receive every reply queued for sender ``r`` now; returns the batches they answered.

        An ACK answers every batch up to its mark (``m``), as a rank's sender takes it: the
        aggregator sends one ACK per sender per commit, the last, whose mark covers the others.
        """
        import zmq

        wire = self.wire
        s = self.by_rank[r]
        answered = 0
        while has_message(s):  # the sender thread's own check (coordinator.transport.loopio)
            try:
                env_b, body = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            env = wire.decode_envelope(env_b)
            if env.kind == wire.ACK:
                mark = wire.decode_map(body).get("m")
                through = max(env.seq, mark) if type(mark) is int else env.seq
                now = time.monotonic()
                for seq in range(self.acked_seq[r] + 1, through + 1):
                    t0 = self.sent_at.pop((r, seq), None)
                    if t0 is None:
                        continue  # answered by an error before
                    answered += 1
                    self.acked_batches += 1
                    self.acked_points += self.spb * len(self.keys)
                    self.t_last_ack = now
                    if len(self.lat) < 200_000:
                        self.lat.append(now - t0)
                self.acked_seq[r] = max(self.acked_seq[r], through)
            elif env.kind == wire.ERROR:
                self.errors.append(f"rank {r}: {wire.decode_map(body)}"[:300])
                if self.sent_at.pop((r, env.seq), None) is not None:
                    answered += 1  # the batch is answered: it leaves the window
        self.inflight[r] -= answered
        self.total_inflight -= answered
        return answered


def _connect(cfg: dict[str, Any]) -> tuple[Any, dict[int, Any], dict[int, int]]:
    """The context, one connected DEALER per rank, each rank's incarnation; every sender welcomed."""
    import zmq

    from coordinator.transport import wire

    run_id, endpoint, world = cfg["run_id"], cfg["endpoint"], cfg["world"]
    ranks = list(range(cfg["rank0"], cfg["rank1"]))
    ctx = zmq.Context()
    # libzmq's default is 1023 sockets per context: more senders than that in one process
    # (``--procs`` small) would fail at socket(); one per sender plus the context's own few.
    ctx.set(zmq.MAX_SOCKETS, max(1024, len(ranks) + 64))
    by_rank: dict[int, Any] = {}
    inc = {r: int.from_bytes(os.urandom(7), "big") for r in ranks}
    for r in ranks:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        by_rank[r] = s
    hello = {"pid": os.getpid(), "host": socket.gethostname(), "world_size": world, "name": "scale", "project": "bench"}
    for r, s in by_rank.items():
        s.send_multipart([wire.encode_envelope(wire.HELLO, run_id, r, inc[r], 0), wire.encode_map(hello)])
    _await_all(by_rank, wire.WELCOME, 120.0, strict=True)
    return ctx, by_rank, inc


def _await_all(by_rank: dict[int, Any], kind: int, timeout: float, *, strict: bool) -> int:
    """Wait until every socket received a reply of ``kind``; how many did (``strict``: raise on timeout)."""
    import zmq

    from coordinator.transport import wire

    poller = zmq.Poller()
    rank_of = {}
    for r, s in by_rank.items():
        poller.register(s, zmq.POLLIN)
        rank_of[s] = r
    got: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(got) < len(by_rank) and time.monotonic() < deadline:
        for s, _ in poller.poll(500):
            while True:
                try:
                    env_b, _body = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if wire.decode_envelope(env_b).kind == kind:
                    got.add(rank_of[s])
    if strict and len(got) < len(by_rank):
        raise RuntimeError(f"only {len(got)} of {len(by_rank)} senders welcomed")
    return len(got)


def _run(cfg: dict[str, Any], snd: _Senders, t_start: float) -> None:
    """Send and collect acks until every sender is done (batches sent or duration over) and acked."""
    import zmq

    ranks = list(snd.by_rank)
    duration = cfg.get("duration")
    t_stop = None if duration is None else t_start + duration
    rate = cfg.get("rate")  # batches per second per sender (None: as fast as the window allows)
    ep = select.epoll()
    rank_of_fd: dict[int, int] = {}
    for r, s in snd.by_rank.items():
        fd = int(s.get(zmq.FD))
        rank_of_fd[fd] = r
        ep.register(fd, select.EPOLLIN)
    # Paced: (next send time, rank); a sender whose window is full waits in `blocked` until an ack.
    # Spread over the interval, or (aligned) all at its start, as a job's ranks flush on one grid.
    spread = 0.0 if cfg.get("aligned") else 1.0
    heap = [(t_start + spread * (i / max(1, len(ranks))) / rate, r) for i, r in enumerate(ranks)] if rate else []
    blocked: dict[int, float] = {}
    # Unpaced: the senders with room in their window, in turn.
    ready = deque(() if rate else ranks)
    queued = set(ready)
    snd.t_last_ack = t_start

    def more(r: int, now: float) -> bool:
        return now < t_stop if t_stop is not None else snd.sent_b[r] < snd.batches

    def answered(r: int) -> None:
        """Sender ``r`` got acks: its window has room again."""
        if rate:
            due = blocked.pop(r, None)
            if due is not None:
                heapq.heappush(heap, (due, r))
        elif r not in queued:
            ready.append(r)
            queued.add(r)

    def collect(r: int) -> None:
        if snd.drain(r):
            answered(r)

    try:
        while True:
            now = time.monotonic()
            if t_stop is not None and now >= t_stop:
                heap.clear()  # the duration is over: no more sends, only the acks still due
                blocked.clear()
                ready.clear()
            if rate:
                while heap and heap[0][0] <= now:
                    due, r = heapq.heappop(heap)
                    if not more(r, now):
                        continue
                    if snd.inflight[r] >= snd.window:
                        blocked[r] = due
                        continue
                    snd.send(r, now)
                    heapq.heappush(heap, (due + 1.0 / rate, r))
                    collect(r)
                timeout = 0.05 if not heap else max(0.0, min(0.05, heap[0][0] - time.monotonic()))
            else:
                for _ in range(min(_SEND_SLICE, len(ready))):
                    r = ready.popleft()
                    queued.discard(r)
                    if not more(r, now) or snd.inflight[r] >= snd.window:
                        continue
                    snd.send(r, now)
                    if snd.inflight[r] < snd.window:
                        ready.append(r)
                        queued.add(r)
                    collect(r)
                timeout = 0.0 if ready else 0.05
            if snd.total_inflight == 0 and not (heap or blocked or ready):
                break  # every sender is done: nothing due, nothing waiting for room, nothing in flight
            for fd, _ev in ep.poll(timeout):
                collect(rank_of_fd[fd])
            if time.monotonic() > t_start + cfg["timeout"]:
                snd.errors.append("timed out")
                break
    finally:
        ep.close()


def sim_main(cfg: dict[str, Any]) -> int:
    """``_sim '<json>'``: one process of simulated senders (ranks ``rank0``..``rank1``-1), over stdin/stdout."""
    from coordinator.transport import wire

    ctx, by_rank, inc = _connect(cfg)
    emit("READY", {"pid": os.getpid(), "senders": len(by_rank)})
    t_start = wait_go()
    if t_start is None:
        return 2
    snd = _Senders(cfg, by_rank, inc)
    _run(cfg, snd, t_start)
    lat = sorted(snd.lat)
    spb = snd.spb
    emit(
        "DONE",
        {
            "t_end": snd.t_last_ack,
            "acked_points": snd.acked_points,
            "acked_batches": snd.acked_batches,
            "sent_batches": sum(snd.sent_b.values()),
            "errors": snd.errors[:5],
            "n_errors": len(snd.errors),
            "ack_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
            "ack_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
            "per_rank_points": {str(r): snd.sent_b[r] * spb for r in by_rank},
        },
    )
    sys.stdin.readline()  # STOP
    run_id = cfg["run_id"]
    for r, s in by_rank.items():
        bye = {"undelivered": 0, "accepted": snd.sent_b[r] * spb * len(snd.keys)}
        s.send_multipart([wire.encode_envelope(wire.BYE, run_id, r, inc[r], 1), wire.encode_map(bye)])
    closed = _await_all(by_rank, wire.BYE_ACK, 60.0, strict=False)
    for s in by_rank.values():
        s.close(0)
    ctx.term()
    emit("STOPPED", {"closed": closed})
    return 0
