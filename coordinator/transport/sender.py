"""The sender thread: owns the rank's DEALER socket (or offline spool), batches, sends, tracks acks.

One thread owns the socket (ZeroMQ sockets are not thread-safe). The training thread talks to
it through the :class:`~coordinator.transport.buffer.Buffer`, a request queue, and a wake-up pipe.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zmq

from coordinator.core.columns import Column
from coordinator.core.values import FieldValue
from coordinator.errors import (
    ClosedError,
    CoordinatorError,
    DeliveryError,
    ProtocolError,
    SinkError,
)
from coordinator.settings import DEFAULTS
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.security import CurveKeys
from coordinator.transport.spool import SegmentedSpool

__all__ = ["BACKPRESSURE_POLICIES", "Backpressure", "Request", "SenderConfig", "SenderThread", "default_hello"]

_log = logging.getLogger(__name__)
_IDLE_FLUSH_S = 0.05


Backpressure = Literal["block", "spool", "drop_oldest"]
BACKPRESSURE_POLICIES = ("block", "spool", "drop_oldest")


@dataclass(kw_only=True, slots=True)
class SenderConfig:
    """Identity and tunables of one sender."""

    run_id: str
    rank: int
    incarnation: int
    endpoint: str | None
    """Aggregator endpoint; ``None`` means offline (spool only)."""
    spool_dir: str | None = None
    """Write-ahead spool of this sender; ``None`` keeps batches in memory only."""
    backpressure: Backpressure = "spool"
    """What happens when the aggregator does not keep up: see init_run."""
    max_backlog_points: int = DEFAULTS.max_buffer_points
    """Points held in memory awaiting a send slot (block: none; drop_oldest: then drop)."""
    max_spool_bytes: int = DEFAULTS.max_spool_bytes
    spool_segment_bytes: int = DEFAULTS.spool_segment_bytes
    flush_interval_s: float = DEFAULTS.flush_interval_s
    max_batch_points: int = DEFAULTS.max_batch_points
    max_window: int = DEFAULTS.max_window_batches
    ack_timeout_s: float = DEFAULTS.ack_timeout_s
    heartbeat_interval_s: float = DEFAULTS.heartbeat_interval_s
    hello: dict[str, Any] = field(default_factory=dict)
    curve: CurveKeys | None = None
    """Connect as a CURVE client with the job's keys (multi-node TCP)."""


class Request:
    """A control request (STATE, QUERY, BYE) from the API thread and its eventual reply."""

    def __init__(self, kind: int, payload: dict[str, Any]) -> None:
        self.kind = kind
        self.payload = payload
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: CoordinatorError | None = None

    def result(self, timeout: float | None, endpoint: str | None) -> dict[str, Any]:
        """Block until the reply arrives.

        Raises:
            CoordinatorTimeoutError: no reply within ``timeout`` seconds.
            CoordinatorError: the aggregator answered with an error.
        """
        from coordinator.errors import CoordinatorTimeoutError

        if not self.done.wait(timeout):
            raise CoordinatorTimeoutError(
                f"no reply to {wire.kind_name(self.kind)} from the aggregator at {endpoint} within {timeout} s",
                endpoint=endpoint,
            )
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


@dataclass(slots=True)
class _Batch:
    seq: int
    gen: int
    points: int
    envelope: bytes
    payload: bytes | None
    """None while the batch waits on disk only (``loc``)."""
    loc: tuple[Path, int] | None = None
    sent_at: float = 0.0


class SenderThread(threading.Thread):
    """Drains the buffer every flush interval into numbered batches, spools and sends them."""

    def __init__(self, cfg: SenderConfig, buf: Buffer, number_steps: Callable[[str, array[int]], None]) -> None:
        """``number_steps(key, steps)`` fills in, in place, the steps a caller left as -1 (the client's rule)."""
        super().__init__(name=f"coordinator-sender-r{cfg.rank}", daemon=True)
        self._number_steps = number_steps
        self.cfg = cfg
        self.buf = buf
        self.requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_evt = threading.Event()
        self._window: OrderedDict[int, _Batch] = OrderedDict()
        """Sent, not yet acknowledged (payload in memory)."""
        self._backlog: deque[_Batch] = deque()
        """Cut, numbered, waiting for a send slot (payload in memory or only on disk)."""
        self._backlog_points = 0
        self._window_points = 0
        self._seq = 0
        self._req_id = 0
        self._open_reqs: dict[int, Request] = {}
        self._hot_keys: list[str] = []
        """Keys logged during the last flush interval: their next columns are pre-built."""
        self._cut_gen = -1
        self._welcomed = False
        self._hello_sent_at = 0.0
        self._last_send = 0.0
        self._spool_retry_at = 0.0
        self._warned_full = False
        self.last_reply_at = 0.0
        """monotonic time of the last message from the aggregator (0: never)."""
        self.sock: zmq.Socket[bytes] | None = None
        self.spool: SegmentedSpool | None = None
        self.counters = {
            "cut_batches": 0,
            "spooled_batches": 0,
            "replayed_batches": 0,
            "resent_batches": 0,
            "lost_points": 0,
        }

    # ------------------------------------------------------------ API side

    def wake(self) -> None:
        """Ask the thread to look at the buffer and the request queue now (any thread)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full, so a wake-up is already pending: nothing is lost

    def submit(self, req: Request) -> Request:
        """Queue a control request (any thread)."""
        if not self.is_alive():
            req.error = ClosedError("the run's sender thread is not running")
            req.done.set()
            return req
        self.requests.put(req)
        self.wake()
        return req

    def stop(self) -> None:
        """Ask the thread to exit after one last flush attempt (any thread)."""
        self._stop_evt.set()
        self.wake()

    # ------------------------------------------------------------ thread side

    def run(self) -> None:
        try:
            if self.cfg.spool_dir is not None:
                self.spool = SegmentedSpool(
                    self.cfg.spool_dir, segment_bytes=self.cfg.spool_segment_bytes, max_bytes=self.cfg.max_spool_bytes
                )
            if self.cfg.endpoint is None:
                self._main_offline()
            else:
                self._main()
        except BaseException as e:  # noqa: BLE001 - the thread must not die silently: surface it to wait()
            _log.error("coordinator sender thread crashed: %r", e, exc_info=True)
            err = e if isinstance(e, CoordinatorError) else CoordinatorError(f"sender thread crashed: {e!r}")
            self.buf.fail(err, fatal=True)
            self._fail_requests(err)
        finally:
            if self.spool is not None:
                # Unacknowledged batches stay on disk for `coordinator sync`; an empty spool goes away.
                self.spool.close(remove_if_empty=self.cfg.endpoint is not None)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _main(self) -> None:
        assert self.cfg.endpoint is not None
        ctx = zmq.Context()
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.cfg.curve is not None:
            self.cfg.curve.apply_client(sock)
        try:
            sock.connect(self.cfg.endpoint)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            self._send_hello()
            next_flush = time.monotonic() + self.cfg.flush_interval_s
            while not self._stop_evt.is_set():
                timeout = max(0.0, next_flush - time.monotonic())
                # Round up: a 0 ms poll in the last millisecond before a flush would spin.
                events = dict(poller.poll(math.ceil(timeout * 1000)))
                if self._wake_r in events:
                    self._drain_wake()
                if sock in events:
                    self._recv_all()
                now = time.monotonic()
                self._serve_requests()
                if now >= next_flush or self.buf.flush_requested:
                    self._flush(now)
                    # Idle (nothing was logged): look again later; wait() wakes us at once anyway.
                    idle = not self._hot_keys
                    next_flush = now + (
                        max(self.cfg.flush_interval_s, _IDLE_FLUSH_S) if idle else self.cfg.flush_interval_s
                    )
                self._pump(now)
                self._housekeeping(now)
            # One last attempt, so close() after wait() loses nothing that is already acked.
            self._flush(time.monotonic())
            self._pump(time.monotonic())
        finally:
            sock.close(linger=0)
            ctx.term()
            self._fail_requests(ClosedError("the run was closed"))

    def _main_offline(self) -> None:
        assert self.spool is not None
        self._welcomed = True
        try:
            self.spool.append(wire.HELLO, 0, self._env(wire.HELLO, 0), wire.encode_map(self.cfg.hello))
            while not self._stop_evt.is_set():
                self._stop_evt.wait(self.cfg.flush_interval_s if not self.buf.flush_requested else 0)
                self._drain_wake()
                self._serve_requests()
                self._flush(time.monotonic())
            self._flush(time.monotonic())
        finally:
            self._fail_requests(ClosedError("the run was closed"))

    def _env(self, kind: int, seq: int) -> bytes:
        c = self.cfg
        return wire.encode_envelope(kind, c.run_id, c.rank, c.incarnation, seq)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass  # empty: every wake-up consumed

    def _send(self, kind: int, seq: int, payload: bytes) -> None:
        assert self.sock is not None
        self.sock.send_multipart([self._env(kind, seq), payload], copy=False)
        self._last_send = time.monotonic()

    def _send_hello(self) -> None:
        self._welcomed = False
        self._hello_sent_at = time.monotonic()
        self._send(wire.HELLO, 0, wire.encode_map(self.cfg.hello))
        _log.debug("rank %d: HELLO to %s", self.cfg.rank, self.cfg.endpoint)

    # ------------------------------------------------------------ requests

    def _serve_requests(self) -> None:
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                return
            if self.cfg.endpoint is None:
                if req.kind == wire.BYE:
                    assert self.spool is not None
                    payload = dict(req.payload, **self.counters)
                    self.spool.append(wire.BYE, 0, self._env(wire.BYE, 0), wire.encode_map(payload))
                    req.reply = {}
                else:
                    req.error = CoordinatorError(
                        "offline runs have no aggregator to read from; "
                        "upload with `coordinator sync` and read the store"
                    )
                req.done.set()
                continue
            if req.kind == wire.BYE:
                req.payload = dict(req.payload, **self.counters)
            self._req_id += 1
            self._open_reqs[self._req_id] = req
            self._send(req.kind, self._req_id, wire.encode_map(req.payload))

    def _fail_requests(self, err: CoordinatorError) -> None:
        for req in self._open_reqs.values():
            req.error = err
            req.done.set()
        self._open_reqs.clear()
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                return
            req.error = err
            req.done.set()

    # ------------------------------------------------------------ batches

    def _may_cut(self, now: float) -> bool:
        """Whether taking the buffer now keeps memory and disk within their bounds."""
        if self.cfg.endpoint is None:
            return True
        if self._welcomed and self._window_room(self.buf.pending) and not self._backlog:
            return True  # straight to the wire
        policy = self.cfg.backpressure
        if policy == "drop_oldest":
            return True
        if policy == "block" or self.spool is None:
            return False  # the data waits in the buffer; log() blocks once it is full
        if now < self._spool_retry_at:  # the spool just failed: hold batches in memory, bounded
            return self._backlog_points < self.cfg.max_backlog_points
        if self.spool.full():
            if not self._warned_full:
                self._warned_full = True
                _log.warning(
                    "rank %d: spool %s is full (%d bytes); log() will block when the buffer fills",
                    self.cfg.rank,
                    self.spool.dir,
                    self.spool.size_bytes,
                )
            return False
        return True

    def _window_room(self, extra: int) -> bool:
        """Whether ``extra`` more points may go in flight: bounded in batches and in points, so a
        rank holds at most ``max_buffer_points`` buffered plus as many in flight in memory."""
        return len(self._window) < self.cfg.max_window and (
            not self._window or self._window_points + extra <= self.cfg.max_backlog_points
        )

    def _flush(self, now: float) -> None:
        if not self._may_cut(now):
            return
        fresh: dict[str, Column] = {k: (array("q"), array("d")) for k in self._hot_keys}
        gen, cols, fields = self.buf.cut(fresh)
        self._hot_keys = [k for k, (steps, _) in cols.items() if steps]
        if not self._hot_keys and not fields:
            self._cut_gen = gen
            if not self._window and not self._backlog:
                self.buf.progress(gen, 0)
            return
        ts = time.time()
        for batch_metrics, batch_fields, n in self._split(cols, fields):
            payload = wire.encode_batch(batch_metrics, batch_fields, ts)
            b = _Batch(0, gen, n, b"", payload)
            if self.spool is not None:
                self._number(b)  # the spool is write-ahead: numbered before it is written
            self.counters["cut_batches"] += 1
            self._store_batch(b, now)
        self._cut_gen = gen
        if self.cfg.backpressure == "drop_oldest":
            self._drop_oldest()

    def _number(self, b: _Batch) -> None:
        """Give ``b`` the next sequence number. Without a spool this happens only when it is sent, so
        batches dropped under ``drop_oldest`` leave no gap for the aggregator to wait on."""
        self._seq += 1
        b.seq = self._seq
        b.envelope = self._env(wire.BATCH, b.seq)

    def _store_batch(self, b: _Batch, now: float) -> None:
        """Write-ahead to the spool (when there is one), then queue for sending."""
        if self.spool is not None and now >= self._spool_retry_at:
            try:
                b.loc = self.spool.append(wire.BATCH, b.seq, b.envelope, b.payload or b"")
            except SinkError as e:
                # Keep the batch in memory: nothing is lost, but the user must hear about the disk.
                self._spool_retry_at = now + 1.0
                self.buf.fail(SinkError(f"rank {self.cfg.rank}: {e}; batches stay in memory until it is fixed"))
                _log.error("rank %d: %s", self.cfg.rank, e)
        if self.cfg.endpoint is None:  # offline: durable once spooled
            if b.loc is None:
                err = DeliveryError(
                    f"offline rank {self.cfg.rank}: batch {b.seq} ({b.points} points) could not "
                    f"be written to the spool",
                    lost_points=b.points,
                )
                self.counters["lost_points"] += b.points
                self.buf.fail(err, lost_points=b.points)
            else:
                self.buf.progress(b.gen, b.points)
            return
        if self._backlog or not self._window_room(b.points) or not self._welcomed:
            if b.loc is not None:
                b.payload = None  # on disk: do not hold it in memory too
                self.counters["spooled_batches"] += 1
            self._backlog.append(b)
            self._backlog_points += b.points
            return
        self._send_batch(b, now)

    def _send_batch(self, b: _Batch, now: float) -> None:
        if not b.seq:
            self._number(b)
        if b.payload is None:
            assert self.spool is not None and b.loc is not None
            b.payload = self.spool.read(b.loc).payload
            self.counters["replayed_batches"] += 1
        assert self.sock is not None
        self.sock.send_multipart([b.envelope, b.payload], copy=False)
        b.sent_at = self._last_send = now
        self._window[b.seq] = b
        self._window_points += b.points
        _log.debug("rank %d: BATCH %d (%d points)", self.cfg.rank, b.seq, b.points)

    def _pump(self, now: float) -> None:
        """Move batches from the backlog into the window while it has room."""
        while self._backlog and self._welcomed and self._window_room(self._backlog[0].points):
            b = self._backlog.popleft()
            self._backlog_points -= b.points
            self._send_batch(b, now)

    def _drop_oldest(self) -> None:
        """Policy drop_oldest: bound the in-memory backlog by dropping its oldest batches (counted)."""
        while self._backlog_points > self.cfg.max_backlog_points and self._backlog:
            b = self._backlog.popleft()
            self._backlog_points -= b.points
            self.buf.dropped(b.points)
            _log.warning(
                "rank %d: dropped batch %d (%d points) under backpressure policy drop_oldest",
                self.cfg.rank,
                b.seq,
                b.points,
            )
        self.buf.progress(self._acked_gen(), 0)

    def _split(
        self, cols: dict[str, Column], fields: list[tuple[str, FieldValue]]
    ) -> list[tuple[list[tuple[str, array[int], array[float]]], list[tuple[str, FieldValue]], int]]:
        cap = self.cfg.max_batch_points
        out: list[tuple[list[tuple[str, array[int], array[float]]], list[tuple[str, FieldValue]], int]] = []
        cur: list[tuple[str, array[int], array[float]]] = []
        n = 0
        for key, (steps, values) in cols.items():
            if not steps:
                continue
            self._number_steps(key, steps)
            i = 0
            while i < len(steps):
                take = min(len(steps) - i, cap - n)
                if i == 0 and take == len(steps):
                    cur.append((key, steps, values))
                else:
                    cur.append((key, steps[i : i + take], values[i : i + take]))
                n += take
                i += take
                if n >= cap:
                    out.append((cur, [], n))
                    cur, n = [], 0
        if cur or fields or not out:
            out.append((cur, fields, n))
        else:
            out[-1] = (out[-1][0], fields, out[-1][2])
        return out

    def _acked_gen(self) -> int:
        if self._window:
            return next(iter(self._window.values())).gen - 1
        if self._backlog:
            return self._backlog[0].gen - 1
        return self._cut_gen

    def _first_unacked(self) -> int:
        if self._window:
            return next(iter(self._window))
        if self._backlog:
            return self._backlog[0].seq
        return self._seq + 1

    def _ack(self, seq: int) -> None:
        b = self._window.pop(seq, None)
        if b is None:
            return  # an ack for a resend that was already acknowledged
        self._window_points -= b.points
        self.buf.progress(self._acked_gen(), b.points)
        if self.spool is not None:
            self.spool.acked_through(self._first_unacked() - 1)
        _log.debug("rank %d: ACK %d", self.cfg.rank, seq)

    def _resend_from(self, seq: int) -> None:
        now = time.monotonic()
        assert self.sock is not None
        for b in self._window.values():
            if b.seq >= seq and b.payload is not None:
                b.sent_at = now
                self.sock.send_multipart([b.envelope, b.payload], copy=False)
                self.counters["resent_batches"] += 1
        self._last_send = now

    # ------------------------------------------------------------ replies

    def _recv_all(self) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_reply_at = time.monotonic()
            try:
                self._on_reply(frames)
            except ProtocolError as e:
                if e.code == "version":
                    err = ProtocolError(
                        f"rank {self.cfg.rank}: the aggregator at {self.cfg.endpoint} is incompatible: {e}",
                        code="version",
                    )
                    self.buf.fail(err, fatal=True)
                    self._fail_requests(err)
                else:
                    _log.warning("rank %d: unreadable reply from the aggregator: %s", self.cfg.rank, e)

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            raise ProtocolError(f"reply of {len(frames)} frames")
        env = wire.decode_envelope(frames[0])
        body = wire.decode_map(frames[1])
        kind = env.kind
        if kind == wire.ACK:
            for w in body.get("w", []):
                _log.warning("%s", w)
            j = body.get("j")
            if type(j) is int and j > self.buf.journal:
                self.buf.journal = j
            self._ack(env.seq)
        elif kind == wire.WELCOME:
            self._on_welcome(body)
        elif kind == wire.PONG:
            pass
        elif kind == wire.ERROR:
            self._on_error(env, body)
        else:
            req = self._open_reqs.pop(env.seq, None)
            if req is not None:
                req.reply = body
                req.done.set()

    def _on_welcome(self, body: dict[str, Any]) -> None:
        last = body.get("last_seq", 0)
        self._welcomed = True
        _log.debug("rank %d: WELCOME, aggregator has up to seq %s", self.cfg.rank, last)
        if type(last) is int:
            for seq in [s for s in self._window if s <= last]:
                self._ack(seq)
        self._resend_from(0)

    def _on_error(self, env: wire.Envelope, body: dict[str, Any]) -> None:
        code = body.get("code")
        msg = str(body.get("message", ""))
        if code == "hello":
            if self._welcomed or time.monotonic() - self._hello_sent_at > 1.0:
                self._send_hello()
        elif code == "gap":
            expected = body.get("expected", 1)
            for seq in [s for s in self._window if s < expected]:
                self._ack(seq)
            self._resend_from(expected)
        elif code == "sink":
            self.buf.fail(SinkError(f"the aggregator could not commit to the store: {msg}"))
        elif code in ("fenced", "version", "wrong_run", "bad_rank"):
            err = ProtocolError(f"the aggregator refused rank {self.cfg.rank}: {msg}", code=str(code))
            self.buf.fail(err, fatal=True)
            self._fail_requests(err)
        elif body.get("re") == wire.BATCH and env.seq in self._window:
            b = self._window.pop(env.seq)
            self._window_points -= b.points
            lost = DeliveryError(
                f"the aggregator rejected batch {env.seq} ({b.points} points): {msg}", lost_points=b.points
            )
            _log.error("%s", lost)
            self.counters["lost_points"] += b.points
            self.buf.fail(lost, lost_points=b.points)
            self.buf.progress(self._acked_gen(), 0)
        else:
            req = self._open_reqs.pop(env.seq, None)
            err2 = ProtocolError(f"the aggregator answered with an error: {msg}", code=str(code))
            if req is not None:
                req.error = err2
                req.done.set()
            else:
                _log.warning("rank %d: %s", self.cfg.rank, err2)

    def _housekeeping(self, now: float) -> None:
        if not self._welcomed and now - self._hello_sent_at > self.cfg.ack_timeout_s:
            self._send_hello()
        if self._window:
            oldest = next(iter(self._window.values()))
            if now - oldest.sent_at > self.cfg.ack_timeout_s:
                _log.debug("rank %d: no ack for %d batches; resending", self.cfg.rank, len(self._window))
                self._resend_from(0)
        if now - self._last_send > self.cfg.heartbeat_interval_s:
            self._send(wire.PING, 0, b"\x80")


def default_hello(world_size: int, name: str, project: str) -> dict[str, Any]:
    """The HELLO payload: who this sender is."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "world_size": world_size,
        "name": name,
        "project": project,
    }
