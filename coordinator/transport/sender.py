"""The sender thread: owns the rank's DEALER socket (or offline spool), and its loop.

One thread owns the socket (ZeroMQ sockets are not thread-safe). The training thread talks to
it through the :class:`~coordinator.transport.buffer.Buffer`, a request queue, and a wake-up pipe.
Every flush interval (:mod:`.cadence`; an idle sender dozes until the next write) the thread cuts
the buffer into batches (:mod:`.batches`) and sends them while the in-flight window
(:mod:`.window`) has room; the rest wait per the backpressure policy (:mod:`.outbox`), and what
is not acknowledged in time goes to the spool (:mod:`.writeahead`). The socket's waits, reads and
sends go through :mod:`.loopio`. Without an endpoint it runs in offline mode (:mod:`.offline`).

Memory stays bounded however long the aggregator is frozen: the socket's send queue has a
high-water mark (the window plus a little room for control messages) and every send is
non-blocking (a refused send is counted and tried again later), and batches are sent again only
after a WELCOME (a new HELLO: after a reconnect, an aggregator restart, or an ack timeout probe)
or a gap report, never blindly on a timer into the same queue.
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from coordinator.errors import ClosedError, CoordinatorError, ProtocolError, SinkError
from coordinator.transport import wire
from coordinator.transport.batches import Cutter, NumberSteps
from coordinator.transport.buffer import Buffer
from coordinator.transport.cadence import Cadence, wall_shift
from coordinator.transport.copies import open_copies
from coordinator.transport.loopio import LoopIO
from coordinator.transport.offline import OfflineSpooler
from coordinator.transport.outbox import Outbox
from coordinator.transport.pipeline import Pipeline, ack_deadline
from coordinator.transport.requests import Request, RequestTable
from coordinator.transport.senderconfig import SenderConfig
from coordinator.transport.slices import GilSlicer
from coordinator.transport.spool import SegmentedSpool
from coordinator.transport.urgency import Hurry, listening
from coordinator.transport.wake import WakePipe
from coordinator.transport.window import Window
from coordinator.transport.writeahead import WriteAhead

__all__ = ["SenderConfig", "SenderThread"]

_log = logging.getLogger(__name__)
_HELLO_RETRY_S = 1.0
"""A refused HELLO is sent again at most this often while not welcomed yet."""
_EMPTY_MAP = b"\x80"
"""A PING's payload (an empty msgpack map)."""
_CONTROL_SLACK = 256
"""Send-queue room beyond the in-flight window, for HELLO, PING and requests."""


class SenderThread(threading.Thread):
    """Drains the buffer every flush interval into numbered batches, spools and sends them."""

    def __init__(self, cfg: SenderConfig, buf: Buffer, number_steps: NumberSteps) -> None:
        """``number_steps(key, steps)`` fills in, in place, the steps a caller left as -1 (the client's rule)."""
        super().__init__(name=f"coordinator-sender-r{cfg.rank}", daemon=True)
        self.cfg = cfg
        self.buf = buf
        self._number_steps = number_steps
        self._requests = RequestTable()
        self._wake = WakePipe()
        self.slicer = GilSlicer(watch=threading.get_ident())
        """Keeps the thread's Python work in short GIL slices (cut, encode, spool, send, acks) while
        the thread that starts it (the training thread, which builds the run) may want the GIL."""
        buf.wake_at(cfg.max_batch_points, self.wake)  # flush by volume: a full batch wakes the thread
        self._stop_evt = threading.Event()
        self._pipe: Pipeline
        """Built when the thread starts (it opens the spool)."""
        self._io: LoopIO
        """The loop's wait, reply reads and sends, once the socket exists."""
        self._hello_sent_at, self._hello_seq = 0.0, 0  # the last HELLO's (only its WELCOME counts)
        self._unsent: list[tuple[int, int, bytes]] = []
        """Requests (kind, id, payload) the full send queue refused: sent on the next rounds."""
        self.deferred_sends = 0
        """Sends refused by the full send queue (the aggregator is not reading): tried again later."""
        self._last_send = 0.0
        self._read_asked = False
        self._hurry = Hurry()
        self.last_reply_at = 0.0
        """monotonic time of the last message from the aggregator (0: never)."""
        self.sock: zmq.Socket[bytes] | None = None
        self.spool: SegmentedSpool | None = None

    # ------------------------------------------------------------ API side

    def wake(self) -> None:
        """Ask the thread to look at the buffer and the request queue now (any thread)."""
        self._wake.wake()

    def ask_read(self) -> None:
        """PING the aggregator on the loop's next turn, whose answer makes it read the rings now (the training
        thread's, when the rank's ring passes a quarter full: ``client/ringlog.py``)."""
        self._read_asked = True
        self._wake.wake()

    def submit(self, req: Request) -> Request:
        """Queue a control request (any thread)."""
        if not self.is_alive():
            req.refuse(ClosedError("the run's sender thread is not running"))
            return req
        self._requests.put(req)
        self.wake()
        return req

    def stop(self) -> None:
        """Ask the thread to exit after one last flush attempt (any thread)."""
        self._stop_evt.set()
        self.wake()

    # ------------------------------------------------------------ thread side

    def run(self) -> None:
        try:
            self._pipe = self._build_pipeline()
            (self._main_offline if self.cfg.endpoint is None else self._main)()
        except BaseException as e:  # the thread must not die silently: surface it to wait()
            _log.error("coordinator sender thread crashed: %r", e, exc_info=True)
            err = e if isinstance(e, CoordinatorError) else CoordinatorError(f"sender thread crashed: {e!r}")
            self.buf.fail(err, fatal=True)
            self._requests.fail_all(err)
            if not isinstance(e, Exception):
                raise  # SystemExit and the like end the thread as they would, once recorded
        finally:
            if self.spool is not None:
                # Unacknowledged batches stay on disk for `coordinator sync`; an empty spool goes away.
                self.spool.close(remove_if_empty=self.cfg.endpoint is not None)
            self._wake.close()

    def _build_pipeline(self) -> Pipeline:
        c = self.cfg
        wal = None
        if c.spool_dir is not None:
            self.spool = SegmentedSpool(c.spool_dir, segment_bytes=c.spool_segment_bytes, max_bytes=c.max_spool_bytes)
            wal = WriteAhead(self.spool, rank=c.rank, buf=self.buf)
        offline = copies = None
        if c.endpoint is None:
            assert wal is not None, "an offline sender needs a spool"
            offline = OfflineSpooler(wal, rank=c.rank, buf=self.buf, envelope=self._env)
        elif c.kill_window_s is not None and c.spool_dir is not None:
            n = self._number_steps  # the client's: whether a GPU tensor is still queued, each key's last step
            copies = open_copies(c.spool_dir, self.buf, c.rank, c.kill_window_s, cut=c.copies_cut, numbering=n)
        return Pipeline(
            buf=self.buf,
            cutter=Cutter(
                self._number_steps,
                c.max_batch_points,
                pause=self.slicer.pause,
                frame_steps=getattr(self._number_steps, "frame", None),  # the client's StepNumbering records frames
            ),
            window=Window(max_batches=c.max_window, max_points=c.max_backlog_points, envelope=self._batch_envelope),
            outbox=Outbox(
                policy=c.backpressure,
                wal=wal,
                max_points=c.max_backlog_points,
                rank=c.rank,
                buf=self.buf,
                min_cut_points=c.max_batch_points,
            ),
            wal=wal,
            offline=offline,
            copies=copies,
            policy=c.backpressure,
            rank=c.rank,
            send=self._send_frames,
            pause=self.slicer.pause,
            defer_s=ack_deadline(c.flush_interval_s),
        )

    def _main(self) -> None:
        assert self.cfg.endpoint is not None
        ctx = zmq.Context()
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.cfg.max_window + _CONTROL_SLACK)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.cfg.curve is not None:
            self.cfg.curve.apply_client(sock)
        try:
            sock.connect(self.cfg.endpoint)
            io = self._io = LoopIO(sock, self._wake.fd, self.slicer.start, self._pipe.timer_fd)  # a stretch a wake-up
            self._send_hello()
            cadence = self._cadence()
            while not self._stop_evt.is_set():
                timeout = max(0.0, cadence.wake_at(self._last_send) - time.monotonic())
                # Round up: a 0 ms poll in the last millisecond before a flush would spin.
                listen = listening(self.buf, self._pipe, self._requests.awaiting or bool(self._unsent))
                if cadence.dozing and not listen and self._settled():
                    woken, replies = self._doze(cadence)
                else:
                    woken, replies = io.wait(math.ceil(timeout * 1000), listen=listen)
                if woken:
                    self._wake.drain()
                if replies:  # listening: one arrived; quiet: they queued since the last flush
                    self._recv_all()
                now = time.monotonic()
                self._send_unsent()
                self._serve_requests()
                if self._read_asked:
                    self._read_asked = False
                    self._send(wire.PING, 0, _EMPTY_MAP)
                if cadence.flush_due(now, self._pipe.copy):
                    # The flush (cut, encoding, send: ~100 µs cold) starts a stretch of its own: the
                    # one since the poll returned already ran 40-60 µs, part of it before start().
                    self.slicer.release()
                    self._flush(now)
                    cadence.flushed(now, self._pipe.idle)
                self._pipe.pump(now)
                if self._hurry.due(self.buf, self._pipe, now, self.last_reply_at):  # someone waits: a short window
                    self._send(wire.PING, 0, _EMPTY_MAP)
                self._housekeeping(now)
                cadence.settle(self._settled())
            # One last attempt, so close() after wait() loses nothing that is already acked.
            self._flush(time.monotonic())
            self._pipe.pump(time.monotonic())
        finally:
            self._pipe.write_unacked()  # what was never acknowledged stays on disk for `coordinator sync`
            sock.close(linger=0)
            ctx.term()
            self._requests.fail_all(ClosedError("the run was closed"))

    def _cadence(self) -> Cadence:
        """The flush timer, on the wall clock's multiples of the interval (the job's ranks flush together)."""
        interval = self.cfg.flush_interval_s
        now = time.monotonic()
        return Cadence(self.buf, interval, self.cfg.heartbeat_interval_s, now, shift=wall_shift(interval, mono=now))

    def _doze(self, cadence: Cadence) -> tuple[bool, bool]:
        """A dozing, settled sender's wait: ``(woken, replies)`` as :meth:`LoopIO.wait` says them, once a wake-up
        is more than a heartbeat that rows in the ring spoke for.

        With rings that heartbeat is the sender's only wake-up while the rank logs. The loop's full turn
        there found nothing to do in ~150 µs of Python on a cold CPU, holding the GIL; this loop only moves the
        silence on and waits again (no slicer stretch: nothing in it pauses). Nothing the full turn looks at
        can change meanwhile but through the pipe (a write, a request, stop), a reply, or ``has_writes`` (a
        write that bypassed the wake rule: the full turn flushes it).
        """
        cfg, buf, io = self.cfg, self.buf, self._io
        while True:
            timeout = cadence.wake_at(self._last_send) - time.monotonic()
            woken, replies = io.wait(math.ceil(max(0.0, timeout) * 1000), listen=False, doze=True)
            if woken:
                return True, replies
            now = time.monotonic()
            if replies or buf.has_writes or now - self._last_send <= cfg.heartbeat_interval_s or not cfg.heard():
                self.slicer.start()
                return False, replies
            self._last_send = now + max(0.0, cfg.quiet_heartbeat_s - cfg.heartbeat_interval_s)  # as housekeeping

    def _settled(self) -> bool:
        """Nothing to wait for: no reply awaited, nothing in flight, held or unsent (a doze may start)."""
        return self._pipe.settled and not self._unsent and not self._requests.awaiting and not self._requests.queued

    def _main_offline(self) -> None:
        offline = self._pipe.offline
        assert offline is not None
        try:
            offline.hello(self.cfg.hello)
            woken = select.poll()  # the wake-up pipe: wait(), stop(), a write to a dozing sender
            woken.register(self._wake.fd, select.POLLIN)
            cadence = self._cadence()
            while not self._stop_evt.is_set():
                now = time.monotonic()  # dozing, it looks again a heartbeat from now (nothing to ping)
                woken.poll(math.ceil(max(0.0, cadence.wake_at(now) - now) * 1000))
                self._wake.drain()
                self._serve_requests()
                now = time.monotonic()
                if cadence.flush_due(now):
                    self._flush(now)  # every batch is written at once: nothing stays in flight
                    cadence.flushed(now, self._pipe.idle)
                cadence.settle(not self._requests.queued)
            self._flush(time.monotonic())
        finally:
            self._requests.fail_all(ClosedError("the run was closed"))

    def _flush(self, now: float) -> None:
        # A method of the thread (not only of the pipeline) so that benchmarks can time each flush.
        self._pipe.flush(now)

    def _env(self, kind: int, seq: int) -> bytes:
        c = self.cfg
        return wire.encode_envelope(kind, c.run_id, c.rank, c.incarnation, seq)

    def _batch_envelope(self, seq: int) -> bytes:
        return self._env(wire.BATCH, seq)

    def _send_frames(self, frames: Sequence[bytes | memoryview], now: float) -> bool:
        """Queue ``frames`` without blocking; False (counted) when the send queue is full."""
        if not self._io.send(frames):
            self.deferred_sends += 1
            return False
        self._last_send = now
        return True

    def _send(self, kind: int, seq: int, payload: bytes) -> bool:
        return self._send_frames([self._env(kind, seq), payload], time.monotonic())

    def _send_hello(self, *, probe: bool = False) -> None:
        """Say HELLO; its WELCOME resends what it did not have. A probe keeps sending meanwhile."""
        if not probe:
            self._pipe.welcomed = False
        self._hello_seq += 1
        self._hello_sent_at = time.monotonic()
        # A HELLO the full queue refuses is retried by housekeeping after ack_timeout_s.
        self._send(wire.HELLO, self._hello_seq, wire.encode_map(self.cfg.hello))
        _log.debug("rank %d: HELLO %d to %s", self.cfg.rank, self._hello_seq, self.cfg.endpoint)

    def _send_unsent(self) -> None:
        while self._unsent:
            kind, seq, payload = self._unsent[0]
            if not self._send(kind, seq, payload):
                return
            self._unsent.pop(0)

    def _serve_requests(self) -> None:
        if not self._requests.queued:
            return
        for req in self._requests.take():
            if self._pipe.offline is not None:
                self._pipe.offline.serve(req, self._pipe.counters())
                continue
            if req.kind == wire.BYE:
                req.payload = dict(req.payload, **self._pipe.counters())
            item = (req.kind, self._requests.open(req), wire.encode_map(req.payload))
            if self._unsent or not self._send(*item):
                self._unsent.append(item)  # in order, behind the others the queue refused

    # ------------------------------------------------------------ replies

    def _recv_all(self) -> None:
        for frames in self._io.replies():
            self.last_reply_at = time.monotonic()
            self.slicer.resume()  # the receive released the GIL for a moment: the budget restarts
            try:
                self._on_reply(frames)
            except ProtocolError as e:
                if e.code == "version":
                    msg = f"rank {self.cfg.rank}: the aggregator at {self.cfg.endpoint} is incompatible: {e}"
                    err = ProtocolError(msg, code="version")
                    self.buf.fail(err, fatal=True)
                    self._requests.fail_all(err)
                else:
                    _log.warning("rank %d: unreadable reply from the aggregator: %s", self.cfg.rank, e)

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            raise ProtocolError(f"reply of {len(frames)} frames")
        env = wire.decode_envelope(frames[0])
        body = wire.decode_map(frames[1])
        self.slicer.pause()  # decoding, then acting on it: two slices
        kind = env.kind
        if kind == wire.ACK:
            for w in body.get("w", []):
                _log.warning("%s", w)
            self.buf.note_journal(body)
            self._pipe.ack(env.seq)
            self._ack_mark(body.get("m"))
        elif kind == wire.WELCOME:
            if env.seq == self._hello_seq:
                self.buf.note_journal(body)
                self._on_welcome(body)
            else:  # the answer to an older HELLO (queued while the aggregator was frozen)
                _log.debug("rank %d: stale WELCOME %d ignored", self.cfg.rank, env.seq)
        elif kind == wire.PONG:
            self.buf.note_journal(body)
            self._ack_mark(body.get("m"))  # an idle rank's heartbeat settles a batch whose ACK was lost
        elif kind == wire.ERROR:
            self._on_error(env, body)
        else:
            self._requests.answer(env.seq, body)

    def _ack_mark(self, mark: Any) -> None:
        """Acknowledge every batch up to the aggregator's durable ``mark`` (if an int): lost ACKs too."""
        if type(mark) is int:
            self._pipe.ack_through(mark)

    def _on_welcome(self, body: dict[str, Any]) -> None:
        last = body.get("last_seq", 0)
        self._pipe.welcomed = True
        welcome = getattr(self._number_steps, "welcome", None)  # the client's StepNumbering: where a resumed rank was
        if welcome is not None:
            welcome(body.get("last_steps"), body)
        _log.debug("rank %d: WELCOME, aggregator has up to seq %s", self.cfg.rank, last)
        first = 0
        if type(last) is int:
            # The aggregator sends a WELCOME after the commit that made every batch up to its
            # mark durable, so those are acknowledged here, probe or not: their own ACKs may never
            # come (lost in a reconnect, or the aggregator died between its commit and its acks,
            # and a probe reached its successor), and waiting for them would wait for ever.
            first = last + 1
            self._pipe.ack_below(first)
        # Batches sent before that HELLO and not acked were lost on the way (a reconnect, a
        # restarted aggregator); those sent after it are still on their way, not sent again.
        self._pipe.resend_from(first, time.monotonic(), sent_before=self._hello_sent_at)

    def _on_error(self, env: wire.Envelope, body: dict[str, Any]) -> None:
        code = body.get("code")
        msg = str(body.get("message", ""))
        if code == "hello":
            if self._pipe.welcomed or time.monotonic() - self._hello_sent_at > _HELLO_RETRY_S:
                self._send_hello()
        elif code == "gap":
            expected = body.get("expected", 1)
            self.buf.note_journal(body)
            self._pipe.ack_below(expected)
            self._pipe.resend_from(expected, time.monotonic())
        elif code == "sink" and body.get("re") in (wire.STATE, wire.QUERY):
            # A read the store could not answer: that request fails with it; the batches' own
            # refusals (if their commit failed) reach wait() on their own.
            err3 = SinkError(f"the aggregator could not answer from the store: {msg}")
            if not self._requests.refuse(env.seq, err3):
                _log.warning("rank %d: %s", self.cfg.rank, err3)
        elif code == "sink":
            self.buf.fail(SinkError(f"the aggregator could not commit to the store: {msg}"))
        elif code in ("fenced", "version", "wrong_run", "bad_rank"):
            err = ProtocolError(f"the aggregator refused rank {self.cfg.rank}: {msg}", code=str(code))
            self.buf.fail(err, fatal=True)
            self._requests.fail_all(err)
        elif body.get("re") == wire.BATCH and self._pipe.is_in_flight(env.seq):
            self._pipe.reject(env.seq, msg)
        else:
            err2 = ProtocolError(f"the aggregator answered with an error: {msg}", code=str(code))
            if not self._requests.refuse(env.seq, err2):
                _log.warning("rank %d: %s", self.cfg.rank, err2)

    def _housekeeping(self, now: float) -> None:
        timeout = self.cfg.ack_timeout_s
        if not self._pipe.welcomed and now - self._hello_sent_at > timeout:
            self._send_hello()
        elif self._pipe.overdue(now, timeout) and now - self._hello_sent_at > timeout:
            # Not a blind resend into the same queue (a frozen aggregator would have it grow by
            # a window every timeout): ask what it has; its WELCOME resends the rest.
            _log.debug("rank %d: no ack for %d batches; probing with HELLO", self.cfg.rank, self._pipe.in_flight)
            self._send_hello(probe=True)
        c = self.cfg
        if now - self._last_send > c.heartbeat_interval_s:
            if self._pipe.settled and c.heard():  # rows the aggregator reads stand for a PING: the silence goes on
                self._last_send = now + max(0.0, c.quiet_heartbeat_s - c.heartbeat_interval_s)  # (its start moved)
            elif not self._send(wire.PING, 0, _EMPTY_MAP):
                self._last_send = now  # the send queue is full: the aggregator will hear from us anyway
