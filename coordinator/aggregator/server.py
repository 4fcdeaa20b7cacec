"""The aggregator's socket loop: one ROUTER socket, group commit, replies only after the commit.

Every message is handled by the :class:`~coordinator.aggregator.core.Aggregator` as it arrives;
replies are queued, and sent once the transaction holding what they acknowledge is committed.
One commit (and one round of acks) covers every rank that sent within its window
(:mod:`~coordinator.aggregator.commitwindow`: 100 ms at a light load, 50 ms at a busy one, 10 ms
when a query, sync, hello or hurrying rank waits): fewer, larger commits leave more CPU to the
training processes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from coordinator.aggregator import marks
from coordinator.aggregator.commitwindow import CommitWindow
from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.core import Aggregator
from coordinator.aggregator.counters import Report
from coordinator.aggregator.fdlimit import ensure_fd_limit
from coordinator.aggregator.queries import QueryReader
from coordinator.aggregator.recovery import recover_spools
from coordinator.aggregator.rings import Rings
from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.core.summary import end_message
from coordinator.errors import ConfigError, ProtocolError, SinkError
from coordinator.journal.paths import resolve_root
from coordinator.transport import wire
from coordinator.transport.loopio import has_message
from coordinator.transport.security import CurveKeys, load_secret, refused_clients, server_auth

__all__ = ["Server", "serve"]

_log = logging.getLogger("coordinator.aggregator")

_ROUND_BYTES = 8 * 1024 * 1024
"""Bytes read per round before committing (and acking) what was read."""
_ROUND_MESSAGES = 2_000
_SWEEP_INTERVAL_S = 1.0
"""How often liveness and rank 0's process are checked, and complete groups emitted at the latest.

An emission costs about as much for a second's steps as for a quarter of it (numpy's per-call
overhead: 0.5-0.6 ms of a paced job's cold CPU, and a liveness check 0.15 ms), and the main series
was held about a second before it was written anyway: a sweep writes what is held with what it
emits. Every 0.25 s (until round 30 of docs/performance.md), the sweeps took a seventh of the
paced job's aggregator CPU."""
_HEALTH_INTERVAL_S = 1.0
_EMIT_BYTES = 1024 * 1024
"""Batch bytes read since the last emission that make the loop emit (and hold) before the next sweep.

Complete groups are emitted at each sweep, when a reply of the round reads the main series, or
after this much input. The byte bound keeps a busy run's pending groups (the reducer's memory)
to about a megabyte of input."""
_MAX_MAP_BYTES = 4096
"""Largest HELLO, STATE, QUERY or BYE payload."""
_STOPPING_COMMIT_RETRIES = 20
"""After a stop signal, failed commits retried before giving up."""

_READS_MAIN = frozenset((wire.QUERY_REPLY, wire.STATE_REPLY, wire.BYE_ACK))
"""Replies after which a rank may read the journal: the held main-series groups and the staged rank
points are written as chunks first."""


class Server:
    """Owns the ROUTER socket and drives the Aggregator; one thread."""

    def __init__(self, agg: Aggregator, endpoint: str) -> None:
        """Bind ``endpoint`` (with CURVE when the config says so).

        Raises:
            ConfigError: CURVE is required but there is no job secret in the environment.
        """
        self.agg = agg
        ensure_fd_limit(agg.cfg.world_size)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.auth: Any = None
        if agg.cfg.curve:
            secret = load_secret()
            if secret is None:
                raise ConfigError("curve=True but no job secret in the environment")
            keys = CurveKeys.from_secret(secret)
            self.auth = server_auth(self.ctx, keys)
            keys.apply_server(self.sock)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        """The bound endpoint (a wildcard TCP port resolved)."""
        self.stopping = False
        """Set by a stop signal: drain, commit, finish the run."""
        self.replies: list[marks.Reply] = []
        self.window = CommitWindow()
        """The group commit window now open (its length depends on the replies due and the load)."""
        self.unroutable = 0
        self.reader = QueryReader(self.ctx, agg.cfg.store_path, agg.cfg.run_id)
        """Answers QUERY off this loop (its own read-only connection); its replies pass through here."""
        self.rings = Rings(agg)
        """The rings of the ranks on this machine, read before every commit (:mod:`.rings`)."""
        self.rings.reattach()

    # ------------------------------------------------------------- replies

    def _reply(self, ident: bytes, kind: int, env: wire.Envelope, payload: dict[str, Any]) -> None:
        self.replies.append((ident, kind, env, payload))
        if kind != wire.ACK:
            self.window.urgent = True

    def _flush_replies(self) -> None:
        for ident, kind, env, payload in self.replies:
            envelope = wire.encode_envelope(kind, self.agg.cfg.run_id, env.rank, env.incarnation, env.seq)
            try:
                self.sock.send_multipart([ident, envelope, wire.encode_map(payload)], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY); it will resend on reconnect
                self.unroutable += 1
                _log.debug("reply to rank %d unroutable: %s", env.rank, e)
        self.replies.clear()
        self.window.urgent = False

    def _fill_reads(self) -> None:
        """STATE and QUERY replies read committed data, so they are built after the commit.

        A QUERY goes to the reader thread, which answers it from what is committed now. The replies that acknowledge
        get the sender's mark as this commit left it (:mod:`.marks`); with trackers, these and a forward STATE's
        (for ring rows, which no ACK names) get the journal's position after it, which ``wait()`` waits them past.
        """
        agg = self.agg
        journal, texts_at = (agg.store.max_chunk_id(), agg.store.max_text_id()) if agg.forwarders else (None, None)
        kept: list[marks.Reply] = []
        for ident, kind, env, payload in self.replies:
            if marks.acknowledges(kind, payload):
                snd = agg.senders.get((env.rank, env.incarnation))
                if snd is not None:
                    marks.fill(kind, payload, snd.last_seq)
                if journal is not None:  # wait() waits for the trackers to pass what acknowledged its calls
                    payload["j"] = journal
                    payload["jt"] = texts_at
            if kind == wire.STATE_REPLY:
                if payload.get("q", {}).get("forward"):
                    fwd = {"forward": agg.forward_positions(), **({} if journal is None else {"j": journal})}
                    kept.append((ident, kind, env, fwd))
                else:
                    kept.append((ident, kind, env, agg.state()))
                continue
            if kind == wire.QUERY_REPLY:
                if self.reader.submit(ident, env, payload["q"]):
                    continue
                busy = {"code": "busy", "message": "too many queries waiting; ask again", "re": env.kind}
                kind, payload = wire.ERROR, busy
            kept.append((ident, kind, env, payload))
        self.replies = marks.coalesce(kept)

    def _forward_answers(self) -> None:
        """Send the reader's encoded answers on to their ranks."""
        while True:
            try:
                frames = self.reader.replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as e:  # the rank is gone; it asks again after reconnecting
                self.unroutable += 1
                _log.debug("query answer unroutable: %s", e)

    def _refuse_acks(self, e: SinkError) -> list[marks.Reply]:
        """No ack for uncommitted data: tell the senders why, so ``wait()`` raises with it.

        A read (STATE, QUERY) is refused with the same error: it is answered from committed data,
        which now lacks what this round received, and its reply is built only after a commit
        (unfilled, a QUERY's reply read as a malformed page). Returns the WELCOMEs and gap reports,
        which wait for the next commit that succeeds (their mark would acknowledge too: :mod:`.marks`).
        """
        held: list[marks.Reply] = []
        refused: list[marks.Reply] = []
        for ident, kind, env, payload in self.replies:
            if kind in (wire.ACK, wire.BYE_ACK, wire.STATE_REPLY, wire.QUERY_REPLY):
                refused.append((ident, wire.ERROR, env, {"code": "sink", "message": str(e), "re": env.kind}))
            elif marks.held_back(kind, payload):
                held.append((ident, kind, env, payload))
            else:
                refused.append((ident, kind, env, payload))
        self.replies = refused
        return held

    # ------------------------------------------------------------- messages

    def handle(self, frames: list[bytes], now: float) -> None:
        """One message from a rank: hand it to the aggregator, queue the reply."""
        agg = self.agg
        if len(frames) != 3:
            agg.counters["bad_frames"] += 1
            _log.warning("dropped a message of %d frames (expected 3)", len(frames))
            return
        ident, head, payload = frames
        try:
            env = wire.decode_envelope(head)
        except ProtocolError as e:
            agg.counters["bad_frames"] += 1
            _log.warning("dropped a bad envelope: %s", e)
            if e.code == "version":
                # A peer of another version gets a reply it can read whatever its version:
                # the envelope is positional and the version is its first element.
                fake = wire.Envelope(wire.PROTOCOL, wire.ERROR, agg.cfg.run_id, 0, 0, 0)
                self._reply(ident, wire.ERROR, fake, {"code": e.code, "message": str(e), "protocol": wire.PROTOCOL})
            return
        try:
            self._dispatch(ident, env, payload, now)
        except ProtocolError as e:
            if e.code not in ("gap", "hello"):
                agg.counters["bad_frames"] += 1
            _log.warning("rank %d: %s %s rejected: %s", env.rank, wire.kind_name(env.kind), env.seq, e)
            snd = agg.senders.get((env.rank, env.incarnation))
            expected = snd.last_seq + 1 if snd is not None else 1
            self._reply(
                ident, wire.ERROR, env, {"code": e.code, "message": str(e), "expected": expected, "re": env.kind}
            )

    def _dispatch(self, ident: bytes, env: wire.Envelope, payload: bytes, now: float) -> None:
        agg = self.agg
        if env.kind == wire.BATCH:
            if (env.rank, env.incarnation) in self.rings.readers:  # its rows first: they were written before
                self.rings.drain(now, only=(env.rank, env.incarnation))
            agg.batch(env, payload, now)
            self.window.read_from((env.rank, env.incarnation))
            warnings = agg.take_warnings(env.rank, env.incarnation)
            self._reply(ident, wire.ACK, env, {"w": warnings} if warnings else {})
        elif env.kind == wire.PING:
            agg.sender(env)  # an unknown sender (we restarted) is told to say HELLO again
            agg.touch(env, now)
            self._reply(ident, wire.PONG, env, {})
        elif env.kind == wire.HELLO:
            info = wire.decode_map(payload, _MAX_MAP_BYTES)
            welcome = agg.hello(env, info, now)
            if "ring" in info:  # the rank writes its rows into the ring only once told it is read
                welcome["ring"] = self.rings.offer(env.rank, env.incarnation, info["ring"])
            self._reply(ident, wire.WELCOME, env, welcome)
        elif env.kind == wire.STATE:
            agg.touch(env, now)
            q = wire.decode_map(payload, _MAX_MAP_BYTES)
            self._reply(ident, wire.STATE_REPLY, env, {"q": q})  # filled after commit
        elif env.kind == wire.QUERY:
            self._reply(ident, wire.QUERY_REPLY, env, {"q": wire.decode_map(payload, _MAX_MAP_BYTES)})
        elif env.kind == wire.BYE:
            self.rings.drain(now)  # the closing rank's last rows count before it is closed
            agg.bye(env, wire.decode_map(payload, 8 * _MAX_MAP_BYTES), now)  # it may carry a 16 KiB traceback
            self._reply(ident, wire.BYE_ACK, env, {})
        else:
            raise ProtocolError(f"unexpected {wire.kind_name(env.kind)} from a rank", code="bad_kind")

    def _receive_round(self, now: float) -> int:
        """Handle what is waiting, up to a bounded round; returns the bytes taken."""
        # Bounded rounds: commit (and ack) every few MB so memory and ack latency stay flat
        # when the ranks are ahead; the rest waits in the socket, then in the ranks' spools.
        taken = 0
        sock = self.sock
        for i in range(_ROUND_MESSAGES):
            # The poll said the first is there; after it, ask whether another waits instead of
            # ending every round on a raised zmq.Again.
            if i and not has_message(sock):
                break
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.handle(frames, now)
            taken += sum(len(f) for f in frames)
            if taken > _ROUND_BYTES:
                break
        self.window.bytes += taken
        return taken

    # ------------------------------------------------------------- loop

    def serve(self) -> Report:
        """Serve until the run ends (or a stop signal drained it); finish the run, return the report."""
        agg = self.agg
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.reader.replies, zmq.POLLIN)
        last_sweep = last_health = 0.0
        window = self.window
        commit_failures = 0
        unreduced = 0  # batch bytes read since the last emission
        while True:
            # Wake up for the next sweep at the latest: it emits (and times out) pending groups,
            # checks liveness and writes what the holds kept. An idle run wakes only for that.
            idle_ms = max(1, math.ceil((last_sweep + _SWEEP_INTERVAL_S - time.time()) * 1000))
            if self.replies:  # acks are due at the next group commit
                idle_ms = window.timeout_ms(time.monotonic())
            elif self.rings.readers:
                idle_ms = min(idle_ms, self.rings.drain_ms)
            events = dict(poller.poll(idle_ms))
            if self.reader.replies in events:
                self._forward_answers()
            now = time.time()
            taken = self._receive_round(now) if self.sock in events else 0
            unreduced += taken
            # Group commit: one transaction (and one round of acks) per window, however many ranks
            # sent in between.
            if (
                self.replies
                and not self.stopping
                and taken <= _ROUND_BYTES
                and window.open_at(time.monotonic(), read=taken > 0)
            ):
                continue
            sweep = now - last_sweep > _SWEEP_INTERVAL_S
            if sweep:
                last_sweep = now
            # The main series is held for up to ~1 s and the rank points are staged for up to
            # ~2 s (fewer, larger chunks), except when a reply of this round reads them (a query,
            # sync, a closing rank), the loop is about to end, or trackers are fed: wait() then
            # waits for the forwarders to pass the journal position of its ack, which must include
            # that batch's rank points and the main-series points emitted with it.
            readers = self.stopping or bool(agg.forwarders) or any(r[1] in _READS_MAIN for r in self.replies)
            emit = readers or sweep or unreduced >= _EMIT_BYTES
            if readers:  # they read what the sweep and the emission write: both go in this commit
                if sweep:
                    last_health = self._sweep(now, last_health)
                if emit:
                    agg.emit(now, all_keys=sweep, hold=False)
                    unreduced = 0
            self.rings.drain(now)
            self.rings.pace()
            if sweep and not readers and not self.replies:
                # No acks wait for this commit: the sweep and what it emits (with the rows just read from the
                # rings) go into it, so the main series follows the ranks by ~1 s, not ~2 (the next commit
                # may be a second away when only rings wake the loop).
                last_health = self._sweep(now, last_health)
                agg.emit(now, all_keys=True, hold=False)
                sweep = emit = False
                unreduced = 0
            try:
                agg.commit(stage=not readers)
                window.committed(time.monotonic())
                commit_failures = 0
                self.rings.committed()
                self.rings.detach_drained()
            except SinkError as e:
                commit_failures += 1
                _log.error("store commit failed (attempt %d), not acking: %s", commit_failures, e)
                # The transaction is kept and retried; resends are duplicates of it.
                held = self._refuse_acks(e)
                self._flush_replies()
                self.replies = held
                time.sleep(min(0.05 * commit_failures, 1.0))
                if self.stopping and commit_failures > _STOPPING_COMMIT_RETRIES:
                    raise
                continue
            self._fill_reads()
            self._flush_replies()
            if not readers and (sweep or emit):
                # Nobody reads them now: the sweep and the emission (tens of ms at a thousand
                # ranks) run after this round's acks went out, and what they write goes in the next
                # commit, as a held main series would anyway. The acks (rank points) never waited
                # for them: emitted groups are rebuilt from the rank points after a crash.
                now = time.time()
                if sweep:  # the next sweep a whole interval after this health, not a hair before (then every 2 s)
                    last_sweep = now
                    last_health = self._sweep(now, last_health)
                if emit:  # a sweep writes what is held: the main series waits about a second, as before
                    agg.emit(now, all_keys=sweep, hold=not sweep)
                    unreduced = 0
            if self.stopping or agg.finished(now):
                break
        return self._finish()

    def _sweep(self, now: float, last_health: float) -> float:
        """Liveness and rank 0's process every sweep, health once a second; returns the last health time."""
        agg = self.agg
        agg.check_liveness(now)
        if now - last_health >= _HEALTH_INTERVAL_S:
            last_health = now
            agg.update_health(now)
            agg.forwarder_warnings()
        if agg.cfg.parent_pid and os.getppid() != agg.cfg.parent_pid:
            agg.parent_lost(now)
        return last_health

    def _finish(self) -> Report:
        """Recover what lost ranks left in their spools, then finish the run."""
        agg = self.agg
        stopped_early = self.stopping and not agg.finished(time.time())
        reason = "aggregator stopped by a signal before every rank closed" if stopped_early else None
        self.rings.drain(time.time(), final=True)  # what ranks that died left in their rings
        if agg.cfg.spool_root and Path(agg.cfg.spool_root).is_dir():
            recover_spools(agg, Path(agg.cfg.spool_root))
        if self.auth is not None:
            agg.counters["refused_clients"] += refused_clients(self.auth)
        rep = agg.finalize(reason)
        self.rings.committed()
        if not stopped_early:  # else live ranks still write: a restarted aggregator reads on
            self.rings.remove_all()
        self._flush_replies()
        return rep

    def close(self) -> None:
        """Answer the queries still queued, close the socket (replies get a second to leave) and the authenticator."""
        self.reader.stop()
        self.rings.close()
        self._forward_answers()
        self.reader.replies.close(linger=0)
        self.sock.close(linger=1000)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def serve(cfg: AggregatorConfig) -> Report:
    """Bind, print ``READY <endpoint>`` on stdout, serve until the run ends; return the report.

    SIGTERM drains and closes the run; SIGINT is ignored (Ctrl-C reaches the whole process
    group, and rank 0 decides).
    """
    agg = Aggregator(cfg)
    srv = Server(agg, cfg.endpoint)
    agg.forwarders.start(cfg.store_path, cfg.backends)
    agg.store.start_checkpoints()  # the WAL's checkpoints off this loop (journal/checkpoint.py)

    def on_term(signum: int, _frame: object) -> None:
        _log.info("signal %d: draining and closing run %s", signum, cfg.run_id)
        srv.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.write(f"READY {srv.endpoint}\n")
    sys.stdout.flush()
    # Rank 0 stops reading our stdout after READY: anything a tracker client prints later (MLflow's
    # "View run ..." line) would hit a closed pipe. Send it to stderr with our log instead.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        rep = srv.serve()
    finally:
        srv.close()
    # A few lines a person reads on rank 0's stderr; the JSON report is in the journal (show --json).
    _log.info("%s", end_message(cfg.run_id, rep, Path(cfg.store_path).parent, resolve_root(None)))
    return rep
