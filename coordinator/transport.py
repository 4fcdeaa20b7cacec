"""The sender thread: owns the rank's DEALER socket (or offline spool), batches, sends, tracks acks.

One thread owns the socket (ZeroMQ sockets are not thread-safe). The training thread talks to
it through the :class:`~coordinator._buffer.Buffer`, a request queue, and a wake-up pipe.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import zmq

from coordinator import wire
from coordinator._buffer import Buffer, Column
from coordinator._defaults import (
    ACK_TIMEOUT_S,
    FLUSH_INTERVAL_S,
    HEARTBEAT_INTERVAL_S,
    MAX_BATCH_POINTS,
    MAX_WINDOW_BATCHES,
)
from coordinator._validate import FieldValue
from coordinator.errors import (
    ClosedError,
    CoordinatorError,
    DeliveryError,
    ProtocolError,
    SinkError,
)
from coordinator.spool import SpoolWriter

__all__ = ["Request", "SenderConfig", "SenderThread", "default_hello"]

_log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class SenderConfig:
    """Identity and tunables of one sender."""

    run_id: str
    rank: int
    incarnation: int
    endpoint: str | None
    """Aggregator endpoint; ``None`` with ``spool_path`` set means offline."""
    spool_path: str | None = None
    """Offline mode: every batch goes to this file instead of a socket."""
    flush_interval_s: float = FLUSH_INTERVAL_S
    max_batch_points: int = MAX_BATCH_POINTS
    max_window: int = MAX_WINDOW_BATCHES
    ack_timeout_s: float = ACK_TIMEOUT_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    hello: dict[str, Any] = field(default_factory=dict)


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
class _InFlight:
    seq: int
    gen: int
    points: int
    envelope: bytes
    payload: bytes
    sent_at: float


class SenderThread(threading.Thread):
    """Drains the buffer every flush interval into numbered batches and sends them."""

    def __init__(self, cfg: SenderConfig, buf: Buffer) -> None:
        super().__init__(name=f"coordinator-sender-r{cfg.rank}", daemon=True)
        self.cfg = cfg
        self.buf = buf
        self.requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_evt = threading.Event()
        self._window: OrderedDict[int, _InFlight] = OrderedDict()
        self._seq = 0
        self._req_id = 0
        self._open_reqs: dict[int, Request] = {}
        self._last_step: dict[str, int] = {}
        self._cut_gen = -1
        self._welcomed = False
        self._hello_sent_at = 0.0
        self._last_send = 0.0
        self.last_reply_at = 0.0
        """monotonic time of the last message from the aggregator (0: never)."""
        self.sock: zmq.Socket[bytes] | None = None
        self._spool: SpoolWriter | None = None

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
            self._main()
        except BaseException as e:  # noqa: BLE001 - the thread must not die silently: surface it to wait()
            _log.error("coordinator sender thread crashed: %r", e, exc_info=True)
            err = e if isinstance(e, CoordinatorError) else CoordinatorError(f"sender thread crashed: {e!r}")
            self.buf.fail(err, fatal=True)
            self._fail_requests(err)
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _main(self) -> None:
        if self.cfg.endpoint is None:
            self._main_offline()
            return
        ctx = zmq.Context()
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        try:
            sock.connect(self.cfg.endpoint)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            self._send_hello()
            next_flush = time.monotonic() + self.cfg.flush_interval_s
            while not self._stop_evt.is_set():
                timeout = max(0.0, next_flush - time.monotonic())
                events = dict(poller.poll(int(timeout * 1000)))
                if self._wake_r in events:
                    self._drain_wake()
                if sock in events:
                    self._recv_all()
                now = time.monotonic()
                self._serve_requests()
                if now >= next_flush or self.buf.flush_requested:
                    self._flush(now)
                    next_flush = now + self.cfg.flush_interval_s
                self._housekeeping(now)
            # One last attempt, so close() after wait() loses nothing that is already acked.
            self._flush(time.monotonic())
        finally:
            sock.close(linger=0)
            ctx.term()
            self._fail_requests(ClosedError("the run was closed"))

    def _main_offline(self) -> None:
        assert self.cfg.spool_path is not None
        self._spool = SpoolWriter(self.cfg.spool_path)
        try:
            self._spool.append(wire.HELLO, 0, self._env(wire.HELLO, 0), wire.encode_map(self.cfg.hello))
            self._welcomed = True
            while not self._stop_evt.is_set():
                self._stop_evt.wait(self.cfg.flush_interval_s if not self.buf.flush_requested else 0)
                self._drain_wake()
                self._serve_requests()
                self._flush(time.monotonic())
            self._flush(time.monotonic())
        finally:
            self._spool.close()
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
            if req.kind == wire.BYE and self._spool is not None:
                self._spool.append(wire.BYE, 0, self._env(wire.BYE, 0), wire.encode_map(req.payload))
                req.reply = {}
                req.done.set()
                continue
            if self._spool is not None:
                req.error = CoordinatorError("offline runs have no aggregator to read from; "
                                             "upload with `coordinator sync` and read the store")  # fmt: skip
                req.done.set()
                continue
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

    def _resolve_steps(self, key: str, steps: array[int]) -> None:
        """Replace -1 (no step given) by the rank's previous step for the key + 1."""
        last = self._last_step.get(key, -1)
        if min(steps) < 0:
            for i, s in enumerate(steps):
                if s < 0:
                    s = steps[i] = last + 1
                last = s
        else:
            last = steps[-1]
        self._last_step[key] = last

    def _flush(self, now: float) -> None:
        if not self._welcomed or len(self._window) >= self.cfg.max_window:
            return
        gen, cols, fields = self.buf.cut()
        if not cols and not fields:
            self._cut_gen = gen
            if not self._window:
                self.buf.progress(gen, 0)
            return
        ts = time.time()
        for batch_metrics, batch_fields, points in self._split(cols, fields):
            self._seq += 1
            payload = wire.encode_batch(batch_metrics, batch_fields, ts)
            inf = _InFlight(self._seq, gen, points, self._env(wire.BATCH, self._seq), payload, now)
            self._deliver(inf)
        self._cut_gen = gen

    def _split(
        self, cols: dict[str, Column], fields: list[tuple[str, FieldValue]]
    ) -> list[tuple[list[tuple[str, array[int], array[float]]], list[tuple[str, FieldValue]], int]]:
        cap = self.cfg.max_batch_points
        out: list[tuple[list[tuple[str, array[int], array[float]]], list[tuple[str, FieldValue]], int]] = []
        cur: list[tuple[str, array[int], array[float]]] = []
        n = 0
        for key, (steps, values) in cols.items():
            self._resolve_steps(key, steps)
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

    def _deliver(self, inf: _InFlight) -> None:
        if self._spool is not None:
            try:
                self._spool.append(wire.BATCH, inf.seq, inf.envelope, inf.payload)
            except SinkError as e:
                self.buf.fail(DeliveryError(f"{e}; {inf.points} points lost", lost_points=inf.points),
                              lost_points=inf.points)  # fmt: skip
                return
            self.buf.progress(inf.gen, inf.points)
            return
        self._window[inf.seq] = inf
        assert self.sock is not None
        self.sock.send_multipart([inf.envelope, inf.payload], copy=False)
        self._last_send = inf.sent_at
        _log.debug("rank %d: BATCH %d (%d points)", self.cfg.rank, inf.seq, inf.points)

    def _acked_gen(self) -> int:
        if self._window:
            return next(iter(self._window.values())).gen - 1
        return self._cut_gen

    def _ack(self, seq: int) -> None:
        inf = self._window.pop(seq, None)
        if inf is None:
            return  # an ack for a resend that was already acknowledged
        self.buf.progress(self._acked_gen(), inf.points)
        _log.debug("rank %d: ACK %d", self.cfg.rank, seq)

    def _resend_from(self, seq: int) -> None:
        now = time.monotonic()
        assert self.sock is not None
        for inf in self._window.values():
            if inf.seq >= seq:
                inf.sent_at = now
                self.sock.send_multipart([inf.envelope, inf.payload], copy=False)
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
            inf = self._window.pop(env.seq)
            lost = DeliveryError(f"the aggregator rejected batch {env.seq} ({inf.points} points): {msg}",
                                 lost_points=inf.points)  # fmt: skip
            _log.error("%s", lost)
            self.buf.fail(lost, lost_points=inf.points)
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
    return {"pid": os.getpid(), "host": socket.gethostname(), "world_size": world_size,
            "name": name, "project": project}  # fmt: skip
