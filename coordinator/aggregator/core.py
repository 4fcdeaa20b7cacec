"""The rank-0 aggregator: ingest every rank's batches, dedupe, reduce, commit, ack, serve state.

Runs as its own process (``python -m coordinator.aggregator --run ID ...``), started by global
rank 0. The :class:`Aggregator` core has no socket and is also used in-process (offline upload).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from coordinator.aggregator.health import Health
from coordinator.aggregator.reduce import Reducer
from coordinator.core import env as _env
from coordinator.core.limits import MAX_FRAME_BYTES
from coordinator.core.policies import POLICY_PREFIX, PolicyTable
from coordinator.core.values import FieldValue
from coordinator.errors import ConfigError, ProtocolError, SinkError
from coordinator.forward.forwarder import Forwarder
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from coordinator.settings import DEFAULTS
from coordinator.transport import wire
from coordinator.transport.security import CurveKeys, load_secret, server_auth
from coordinator.transport.spool import spool_records

__all__ = ["Aggregator", "AggregatorConfig", "main", "serve"]

_log = logging.getLogger("coordinator.aggregator")

_HOST = socket.gethostname()
_ROUND_BYTES = 8 * 1024 * 1024
_COMMIT_INTERVAL_S = 0.01

SYSTEM_RANK = -1
"""Writer rank of the ``sys/*`` fields; it outranks every training rank."""


@dataclass(kw_only=True, slots=True)
class AggregatorConfig:
    """What one aggregator serves."""

    run_id: str
    """The run every rank writes to."""
    store_path: str
    """The run's ``run.db``."""
    world_size: int
    """Number of ranks expected."""
    project: str = "default"
    """Project name recorded with the run."""
    name: str = ""
    """Human-readable run name."""
    endpoint: str = ""
    """ZeroMQ endpoint to bind (socket mode only)."""
    parent_pid: int = 0
    """Rank 0's pid; when it disappears the run is closed as failed after draining the others."""
    policies: dict[str, str] = field(default_factory=dict)
    """Glob -> reduction policy."""
    default_policy: str = "mean"
    """Policy of keys no glob matches."""
    group_timeout_s: float = DEFAULTS.group_timeout_s
    """Longest a (key, step) group waits for ranks that never logged the key."""
    liveness_timeout_s: float = DEFAULTS.liveness_timeout_s
    """A rank silent this long is reported lost."""
    straggler_lag_s: float = DEFAULTS.straggler_lag_s
    """A rank reaching steps this much later than the fastest (median of recent steps) is a straggler."""
    stop_grace_s: float = DEFAULTS.stop_grace_s
    """After rank 0's goodbye, how long to wait for ranks that never connected."""
    durable: bool = False
    """SQLite ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``."""
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    """External trackers fed from the journal: name -> options (see coordinator.forward.backend)."""
    forward_timeout_s: float = 60.0
    """At the run's end, how long the forwarders may take to catch up before giving up (resumable)."""
    nice: int = 10
    """CPU niceness added to the aggregator process: training processes get the CPU first."""
    curve: bool = False
    """Require CURVE with keys derived from the job secret (read from the environment, never argv)."""
    spool_root: str = ""
    """The ranks' spool directory; at the end what lost ranks left there is recovered."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not self.run_id:
            raise ValueError("run_id must not be empty")
        PolicyTable(self.policies, self.default_policy)  # raises naming a bad policy


@dataclass(slots=True)
class _Sender:
    rank: int
    incarnation: int
    last_seq: int
    first_seen: float
    last_seen: float
    pid: int | None = None
    host: str | None = None
    points: int = 0
    batches: int = 0
    state: str = "live"  # live | closed | lost | fenced
    undelivered: int = 0
    resumed: bool = False
    """A later incarnation of its rank: its first step of a key may rewind that key."""
    superseded: bool = False
    """Replayed from a spool after a newer incarnation took over: per-rank data only."""
    keys_seen: set[str] = field(default_factory=set)
    client: dict[str, int] = field(default_factory=dict)
    """The rank's own delivery counters, from its goodbye."""


@dataclass(slots=True)
class _Field:
    value: FieldValue
    rank: int


class Aggregator:
    """The ingest core: exactly-once per (sender, seq), reduction, fields, state, report.

    Not thread-safe: one loop owns it. Acks for batches ingested since the last
    :meth:`commit` must be sent only after that commit returns.
    """

    def __init__(self, cfg: AggregatorConfig, *, lock_timeout_s: float = 60.0) -> None:
        """Open the run's store as its single writer.

        Raises:
            SinkError: another aggregator (or upload) still holds the run after ``lock_timeout_s``.
        """
        self.cfg = cfg
        self._lock = _WriterLock(Path(cfg.store_path).parent / "writer.lock", lock_timeout_s)
        try:
            self.store = LocalStore(cfg.store_path, durable=cfg.durable)
        except BaseException:
            self._lock.release()
            raise
        try:
            previous = self.store.run_info().state
        except SinkError:
            previous = None  # a new run
        self.store.create_run(cfg.run_id, cfg.project, cfg.name or cfg.run_id, cfg.world_size, time.time())
        self.t0 = self.store.run_info().created  # a restarted aggregator keeps the run's creation time
        self.store.set_meta("config", json.dumps({"policies": cfg.policies, "default_policy": cfg.default_policy}))
        self.policy = PolicyTable(cfg.policies, cfg.default_policy)
        self.reducer = Reducer(cfg.world_size, self.policy, cfg.group_timeout_s)
        self.health = Health(cfg.world_size, cfg.straggler_lag_s)
        self.stragglers: set[int] = set()
        self.stragglers_seen: set[int] = set()
        self.health_snapshot: dict[int, dict[str, Any]] = {}
        self.forwarders: list[Forwarder] = []
        """Started by the serving process only (an offline upload does not forward)."""
        self._forwarder_warned: set[str] = set()
        self.txn = TxnData()
        self.senders: dict[tuple[int, int], _Sender] = {}
        self.current: dict[int, int] = {}
        """rank -> live incarnation."""
        self.rank_state: dict[int, str] = {}
        self.known_keys: set[str] = set(self.store.key_policies())
        self.fields: dict[str, _Field] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.counters = {
            "batches": 0,
            "points": 0,
            "duplicate_batches": 0,
            "bad_frames": 0,
            "gaps": 0,
            "fenced_batches": 0,
            "conflicts": 0,
            "main_points": 0,
            "unknown_sender": 0,
            "rewinds": 0,
            "recovered_points": 0,
        }
        self.warnings_for: dict[tuple[int, int], list[str]] = {}
        self.rank0_bye_at: float | None = None
        self.reasons: list[str] = []
        self._restore()
        if previous is not None:
            kind = "aggregator_restarted" if previous == "running" else "run_reopened"
            self.txn.events.append(
                (time.time(), kind, None, f"the run was {previous!r}; state recovered from the store")
            )
        self._set_sys_fields()

    # ------------------------------------------------------------- recovery

    def _restore(self) -> None:
        """Reload high-water marks and fields so a restarted aggregator drops resends."""
        for s in self.store.senders():  # ordered by rank, first_seen: the last one is current
            snd = _Sender(
                s["rank"],
                s["incarnation"],
                s["last_seq"],
                s["first_seen"],
                s["last_seen"],
                s["pid"],
                s["host"],
                s["points"],
                s["batches"],
                s["state"],
            )
            self.senders[(snd.rank, snd.incarnation)] = snd
            if snd.state != "lost" or snd.rank not in self.current:
                self.current[snd.rank] = snd.incarnation
                self.rank_state[snd.rank] = "lost" if snd.state == "fenced" else snd.state
        seen: set[int] = set()
        for snd in sorted(self.senders.values(), key=lambda x: x.first_seen):
            snd.resumed = snd.rank in seen
            seen.add(snd.rank)
        for rank, st in self.rank_state.items():
            if st in ("closed", "lost"):
                self.reducer.rank_done(rank)
        if self.rank_state.get(0) == "closed":
            self.rank0_bye_at = time.time()
        saved = self.store.meta("counters")
        if saved:
            for k, v in json.loads(saved).items():
                if isinstance(v, int):
                    self.counters[k] = v
        writers = self.store.field_writers()
        for path, (tag, val) in self.store.fields().items():
            self.fields[path] = _Field((tag, val), writers.get(path, 0))
        now = time.time()
        for key in self.store.key_policies():
            main = self.store.values(key, MAIN_RANK)
            self.reducer.restore(key, main[-1][0] if main else -1, self.store.rank_points(key), now)
            if main:
                self.last[key] = main[-1]

    def _set_sys_fields(self) -> None:
        c = self.cfg
        for path, fv in (
            ("sys/id", ("str", c.run_id)),
            ("sys/name", ("str", c.name or c.run_id)),
            ("sys/project", ("str", c.project)),
            ("sys/world_size", ("int", c.world_size)),
            ("sys/creation_time", ("datetime", self.t0)),
            ("sys/state", ("str", "running")),
        ):
            self._write_field(path, fv, SYSTEM_RANK, self.t0)

    # ------------------------------------------------------------- messages

    def hello(
        self, env: wire.Envelope, info: dict[str, Any], now: float, *, recovering: bool = False
    ) -> dict[str, Any]:
        """Register a sender; returns the WELCOME payload (its high-water mark).

        With ``recovering``, the sender is registered for replaying its spool without becoming
        the rank's live incarnation.
        """
        if env.run_id != self.cfg.run_id:
            raise ProtocolError(f"this aggregator serves run {self.cfg.run_id!r}, not {env.run_id!r}", code="wrong_run")
        if env.rank >= self.cfg.world_size:
            raise ProtocolError(f"rank {env.rank} is outside world size {self.cfg.world_size}", code="bad_rank")
        key = (env.rank, env.incarnation)
        snd = self.senders.get(key)
        if snd is not None and snd.state == "fenced" and not recovering:
            raise ProtocolError(f"rank {env.rank} incarnation {env.incarnation} was replaced", code="fenced")
        if snd is None:
            pid = info.get("pid")
            host = info.get("host")
            snd = self.senders[key] = _Sender(
                env.rank,
                env.incarnation,
                0,
                now,
                now,
                pid if type(pid) is int else None,
                host if type(host) is str else None,
            )
            self.txn.events.append((now, "rank_joined", env.rank, f"incarnation {env.incarnation} pid {snd.pid}"))
            others = [i for (r, i) in self.senders if r == env.rank and i != env.incarnation]
            snd.resumed = bool(others)
            if recovering:
                snd.superseded = self.current.get(env.rank, env.incarnation) != env.incarnation
                snd.state = "lost"
                self._persist_sender(snd)
                return {"last_seq": 0}
        if recovering:
            return {"last_seq": snd.last_seq}
        old = self.current.get(env.rank)
        if old is not None and old != env.incarnation:
            prev = self.senders[(env.rank, old)]
            if prev.state in ("live", "lost"):
                prev.state = "fenced"
                self._persist_sender(prev)
            self.txn.events.append((now, "rank_restarted", env.rank, f"incarnation {old} -> {env.incarnation}"))
        self.current[env.rank] = env.incarnation
        self.reducer.done.discard(env.rank)
        snd.state = "live"
        snd.last_seen = now
        self.rank_state[env.rank] = "live"
        self._persist_sender(snd)
        _log.debug("hello rank %d incarnation %d (last seq %d)", env.rank, env.incarnation, snd.last_seq)
        return {"last_seq": snd.last_seq, "run_id": self.cfg.run_id, "protocol": wire.PROTOCOL}

    def _persist_sender(self, s: _Sender) -> None:
        self.txn.senders[(s.rank, s.incarnation)] = (
            s.last_seq,
            s.points,
            s.batches,
            s.first_seen,
            s.last_seen,
            s.state,
            s.pid,
            s.host,
        )

    def sender(self, env: wire.Envelope, *, recovering: bool = False) -> _Sender:
        """The registered sender of ``env``.

        Raises:
            ProtocolError: unknown (``code="hello"``: say HELLO first) or fenced sender.
        """
        if env.run_id != self.cfg.run_id:
            raise ProtocolError(f"this aggregator serves run {self.cfg.run_id!r}, not {env.run_id!r}", code="wrong_run")
        snd = self.senders.get((env.rank, env.incarnation))
        if snd is None:
            self.counters["unknown_sender"] += 1
            raise ProtocolError("unknown sender: HELLO first", code="hello")
        if snd.state == "fenced" and not recovering:
            self.counters["fenced_batches"] += 1
            raise ProtocolError(
                f"rank {env.rank} incarnation {env.incarnation} was replaced by a newer incarnation",
                code="fenced",
            )
        return snd

    def batch(self, env: wire.Envelope, payload: bytes, now: float, *, recovering: bool = False) -> str:
        """Ingest one batch; returns ``"new"`` or ``"duplicate"`` (ack both after commit).

        Raises:
            ProtocolError: unknown/fenced sender, a sequence gap (``code="gap"``), a bad payload.
        """
        snd = self.sender(env, recovering=recovering)
        if not recovering:
            snd.last_seen = now
        if env.seq <= snd.last_seq:
            self.counters["duplicate_batches"] += 1
            _log.debug("duplicate batch rank %d seq %d", env.rank, env.seq)
            return "duplicate"
        if env.seq != snd.last_seq + 1:
            self.counters["gaps"] += 1
            raise ProtocolError(f"sequence gap: expected {snd.last_seq + 1}, got {env.seq}", code="gap")
        try:
            b = wire.decode_batch(payload)
        except ProtocolError:
            self.counters["bad_frames"] += 1
            raise
        self._ingest(snd, env.seq, b, now)
        return "new"

    def _ingest(self, snd: _Sender, seq: int, b: wire.Batch, now: float) -> None:
        rank = snd.rank
        txn = self.txn
        n = 0
        if b.fields and any(p.startswith(POLICY_PREFIX) for p, _ in b.fields):
            b.fields = self._take_policies(b.fields, rank, now)
        for key, steps, values in b.metrics:
            if key not in self.known_keys:
                self.known_keys.add(key)
                txn.key_policies[key] = self.policy(key)
            txn.chunks.append(ChunkRow(key, rank, snd.incarnation, seq, b.ts, steps, values))
            if key not in snd.keys_seen:
                snd.keys_seen.add(key)
                if snd.resumed:
                    self._maybe_rewind(snd, key, min(steps), now)
            if not snd.superseded:
                self.reducer.add(key, rank, steps, values, now)
            n += len(steps)
        if b.metrics and not snd.superseded:
            self.health.progress(rank, max(max(steps) for _, steps, _ in b.metrics), now)
        for path, fv in b.fields:
            self._write_field(path, fv, rank, b.ts)
        snd.last_seq = seq
        snd.points += n
        snd.batches += 1
        self.counters["batches"] += 1
        self.counters["points"] += n
        self._persist_sender(snd)

    def _take_policies(
        self, fields: list[tuple[str, FieldValue]], rank: int, now: float
    ) -> list[tuple[str, FieldValue]]:
        """Apply per-key policy overrides (before the batch's points); return the other fields."""
        rest = []
        for path, fv in fields:
            if not path.startswith(POLICY_PREFIX):
                rest.append((path, fv))
                continue
            key, policy = path[len(POLICY_PREFIX) :], str(fv[1])
            current = self.policy(key)
            if key in self.known_keys and current != policy:
                self._conflict(path, rank, fv, SYSTEM_RANK, now)
                continue
            try:
                self.policy.override(key, policy)
            except ValueError as e:
                _log.warning("rank %d: %s", rank, e)
                continue
            self._write_field(path, fv, SYSTEM_RANK, now)
        return rest

    def _maybe_rewind(self, snd: _Sender, key: str, first: int, now: float) -> None:
        st = self.reducer.keys.get(key)
        if st is None or first > st.maxstep.get(snd.rank, -1):
            return
        self.reducer.rewind(key, snd.rank, first)
        self.counters["rewinds"] += 1
        self.txn.events.append(
            (now, "rank_resumed", snd.rank, f"incarnation {snd.incarnation} re-logs {key!r} from step {first}")
        )
        _log.info(
            "rank %d (incarnation %d) resumed %r at step %d: later steps are replaced",
            snd.rank,
            snd.incarnation,
            key,
            first,
        )

    def _write_field(self, path: str, fv: FieldValue, rank: int, ts: float) -> None:
        cur = self.fields.get(path)
        if cur is not None and cur.value == fv:
            return  # equal writes, from any rank, are stored once
        if cur is None or cur.rank == rank or rank < cur.rank:
            if cur is not None and cur.rank != rank:
                self._conflict(path, cur.rank, cur.value, rank, ts)
            self.fields[path] = _Field(fv, rank)
            self.txn.fields.append((path, fv, rank, ts))
        else:
            self._conflict(path, rank, fv, cur.rank, ts)

    def _conflict(self, path: str, rank: int, rejected: FieldValue, kept_rank: int, ts: float) -> None:
        self.counters["conflicts"] += 1
        self._write_field("sys/conflicts", ("int", self.counters["conflicts"]), SYSTEM_RANK, ts)
        self.txn.conflicts.append((path, rank, rejected, kept_rank, ts))
        msg = (
            f"field {path!r}: rank {rank} wrote {rejected[1]!r:.80}, which conflicts with rank "
            f"{kept_rank}'s value; rank {kept_rank}'s value is kept (lowest rank wins)"
        )
        _log.warning("%s", msg)
        inc = self.current.get(rank)
        if inc is not None:
            self.warnings_for.setdefault((rank, inc), []).append(msg)

    def recover_spools(self, spool_root: Path, *, skip_live: bool = True) -> int:
        """Ingest what ranks left in their spools (crashed or never acknowledged); returns points.

        Only for senders that are no longer sending (the run is ending, or an upload after the
        job). Batches already committed are recognised by sequence number and skipped; each
        spool directory is removed once its batches are committed.
        """
        recovered = 0
        for d in sorted(spool_root.glob("rank-*-*")):
            try:
                _, r, i = d.name.split("-")
                rank, inc = int(r), int(i)
            except ValueError:
                _log.warning("ignoring unexpected spool directory %s", d)
                continue
            known = self.senders.get((rank, inc))
            if (
                skip_live
                and known is not None
                and (known.state == "live" or (known.state == "closed" and not known.undelivered))
            ):
                continue  # still sending, or closed cleanly (it removes its own empty spool)
            try:
                got = self._recover_dir(d, rank, inc)
            except FileNotFoundError:
                continue  # the rank removed its (empty) spool while we looked: nothing to recover
            recovered += got
        return recovered

    def _recover_dir(self, d: Path, rank: int, inc: int) -> int:
        before = self.counters["points"]
        for n, rec in enumerate(spool_records(d), 1):
            now = time.time()
            try:
                env = wire.decode_envelope(rec.envelope)
                if (env.rank, env.incarnation) != (rank, inc) or env.run_id != self.cfg.run_id:
                    raise ProtocolError(f"record of rank {env.rank} in {d}")
                if env.kind == wire.HELLO:  # an offline rank's spool records its whole life
                    self.hello(env, wire.decode_map(rec.payload, 4096), now)
                elif env.kind == wire.BATCH:
                    if (rank, inc) not in self.senders:
                        self.hello(env, {}, now, recovering=True)
                    self.batch(env, rec.payload, now, recovering=True)
                elif env.kind == wire.BYE:
                    self.bye(env, wire.decode_map(rec.payload, 4096), now)
            except ProtocolError as e:
                self.counters["bad_frames"] += 1
                _log.warning("spool %s: skipped a record: %s", d, e)
            if n % 256 == 0:
                self.emit(now)
                self.commit()
        got = self.counters["points"] - before
        if got:
            self.txn.events.append((time.time(), "spool_recovered", rank, f"incarnation {inc}: {got} points from {d}"))
            _log.info("recovered %d points of rank %d from its spool %s", got, rank, d)
        self.counters["recovered_points"] += got
        self.emit(time.time())
        self.commit()
        shutil.rmtree(d, ignore_errors=True)
        return got

    def bye(self, env: wire.Envelope, info: dict[str, Any], now: float) -> None:
        """A rank closed; records what it says it could not deliver."""
        snd = self.sender(env)
        und = info.get("undelivered")
        snd.undelivered = und if type(und) is int and und >= 0 else 0
        snd.client = {k: v for k, v in info.items() if type(v) is int and v >= 0 and len(k) <= 32}
        snd.state = "closed"
        snd.last_seen = now
        self._persist_sender(snd)
        if self.current.get(env.rank) == env.incarnation:
            self.rank_state[env.rank] = "closed"
            self.reducer.rank_done(env.rank)
        detail = f"incarnation {env.incarnation}, {snd.points} points; rank counters {json.dumps(snd.client)}"
        if snd.undelivered:
            detail += f", {snd.undelivered} points undelivered"
            self.reasons.append(f"rank {env.rank} closed with {snd.undelivered} points undelivered")
        self.txn.events.append((now, "rank_closed", env.rank, detail))
        if env.rank == 0 and self.rank0_bye_at is None:
            self.rank0_bye_at = now

    def touch(self, env: wire.Envelope, now: float) -> None:
        """Record liveness (heartbeat)."""
        snd = self.senders.get((env.rank, env.incarnation))
        if snd is not None and snd.state in ("live", "lost"):
            snd.last_seen = now
            if snd.state == "lost":
                snd.state = "live"
                if self.current.get(snd.rank) == snd.incarnation:
                    self.rank_state[snd.rank] = "live"

    def state(self) -> dict[str, Any]:
        """Everything ``sync()`` shows a rank: fields, last main values, rank states."""
        return {
            "fields": {p: [f.value[0], f.value[1]] for p, f in self.fields.items()},
            "last": {k: [s, v] for k, (s, v) in self.last.items()},
            "ranks": {str(r): st for r, st in self.rank_state.items()},
        }

    def forward_positions(self) -> dict[str, list[Any]]:
        """Each forwarder's journal cursor and its fatal error (None while it is healthy)."""
        return {f.backend_name: [f.position, None if f.error is None else str(f.error)] for f in self.forwarders}

    def query(self, q: dict[str, Any]) -> dict[str, Any]:
        """Answer a read (``op="values"``: a series, main or one rank's)."""
        if q.get("op") != "values":
            raise ProtocolError(f"unknown query {q.get('op')!r:.40}", code="bad_query")
        key, rank = q.get("key"), q.get("rank", MAIN_RANK)
        if type(key) is not str or type(rank) is not int:
            raise ProtocolError("query needs key (str) and rank (int)", code="bad_query")
        pts = self.store.values(key, rank)
        return {"steps": [s for s, _ in pts], "values": [v for _, v in pts]}

    # ------------------------------------------------------------- periodic

    def emit(self, now: float, *, force: bool = False, all_keys: bool = False) -> None:
        """Move complete (or timed-out) groups into the transaction as main-series chunks."""
        for key, e in self.reducer.emit(now, force=force, all_keys=all_keys).items():
            self.txn.chunks.append(ChunkRow(key, MAIN_RANK, 0, 0, time.time(), e.steps, e.values, e.counts))
            self.last[key] = (e.steps[-1], e.values[-1])
            self.counters["main_points"] += len(e.steps)

    def update_health(self, now: float) -> None:
        """Publish each rank's progress as ``sys/ranks/<r>/*`` fields and ``sys/stragglers``."""
        # Closed ranks keep their final standing; lost ones no longer count as the fastest or slowest.
        active = {r for r, st in self.rank_state.items() if st in ("live", "closed")}
        snap = self.health.snapshot(now, active)
        for rank, h in snap.items():
            base = f"sys/ranks/{rank}"
            self._write_field(f"{base}/state", ("str", self.rank_state.get(rank, "unknown")), SYSTEM_RANK, now)
            self._write_field(f"{base}/last_step", ("int", h["last_step"]), SYSTEM_RANK, now)
            self._write_field(f"{base}/steps_per_s", ("float", float(h["steps_per_s"])), SYSTEM_RANK, now)
            self._write_field(f"{base}/lag_s", ("float", float(h["lag_s"])), SYSTEM_RANK, now)
            if h["lag_steps"] is not None:
                self._write_field(f"{base}/lag_steps", ("int", h["lag_steps"]), SYSTEM_RANK, now)
        stragglers = {r for r, h in snap.items() if h["straggler"]}
        self.stragglers_seen |= stragglers
        for r in stragglers - self.stragglers:
            msg = f"rank {r} is a straggler: {snap[r]['lag_s']:.3f} s behind the fastest rank"
            self.txn.events.append((now, "straggler", r, msg))
            _log.warning("%s", msg)
        if stragglers != self.stragglers or "sys/stragglers" not in self.fields:
            self.stragglers = stragglers
            self._write_field("sys/stragglers", ("list", sorted(stragglers)), SYSTEM_RANK, now)
        self.health_snapshot = snap

    def check_liveness(self, now: float) -> None:
        """Mark ranks lost: silent past the liveness timeout, or (same host) their process is gone."""
        for (rank, inc), s in self.senders.items():
            if s.state != "live":
                continue
            if now - s.last_seen > self.cfg.liveness_timeout_s:
                why = f"silent for {now - s.last_seen:.1f} s"
            elif s.pid is not None and s.host == _HOST and not psutil.pid_exists(s.pid):
                why = f"process {s.pid} exited without closing"
            else:
                continue
            s.state = "lost"
            self._persist_sender(s)
            if self.current.get(rank) == inc:
                self.rank_state[rank] = "lost"
                self.reducer.rank_done(rank)
            last = self.health.ranks[rank].last_step if rank in self.health.ranks else -1
            msg = f"rank {rank} lost: {why} after {s.points} points (last step {last})"
            self.txn.events.append((now, "rank_lost", rank, msg))
            _log.warning("%s", msg)

    def parent_lost(self, now: float) -> None:
        """Rank 0's process died: stop waiting for it, record why."""
        if self.rank_state.get(0) not in ("closed", "lost"):
            self.rank_state[0] = "lost"
            self.reducer.rank_done(0)
            for (rank, _), s in self.senders.items():
                if rank == 0 and s.state == "live":
                    s.state = "lost"
                    self._persist_sender(s)
            self.reasons.append("rank 0's process died before closing the run")
            self.txn.events.append((now, "rank_lost", 0, "rank 0's process died"))
            _log.error("rank 0's process (pid %d) died; draining the other ranks", self.cfg.parent_pid)
        if self.rank0_bye_at is None:
            self.rank0_bye_at = now

    def finished(self, now: float) -> bool:
        """True once rank 0 closed (or died) and every rank closed, was lost, or never came."""
        if self.rank0_bye_at is None:
            return False
        waiting_for_new = now - self.rank0_bye_at < self.cfg.stop_grace_s
        for r in range(self.cfg.world_size):
            st = self.rank_state.get(r)
            if st == "live" or (st is None and waiting_for_new):
                return False
        return True

    def commit(self) -> None:
        """Commit the open transaction (raises SinkError and keeps it for a retry on failure)."""
        if self.txn.empty():
            return
        self.txn.meta["counters"] = json.dumps(self.counters)
        self.store.commit(self.txn)
        self.txn = TxnData()

    def report(self, now: float) -> dict[str, Any]:
        """The run's final report."""
        per_rank: dict[str, dict[str, Any]] = {}
        for (rank, inc), s in sorted(self.senders.items()):
            r = per_rank.setdefault(
                str(rank), {"points": 0, "batches": 0, "undelivered": 0, "incarnations": 0, "state": s.state}
            )
            r["points"] += s.points
            r["batches"] += s.batches
            r["undelivered"] += s.undelivered
            r["incarnations"] += 1
            for k, v in s.client.items():  # the rank's own counters: accepted, spooled, replayed, dropped
                if k != "undelivered":
                    r[k] = r.get(k, 0) + v
            if self.current.get(rank) == inc:
                r["state"] = s.state
        never = [r for r in range(self.cfg.world_size) if r not in self.rank_state]
        return {
            **self.counters,
            "late_points": self.reducer.late_points,
            "replaced_points": self.reducer.replaced_points,
            "ranks_seen": sorted(self.rank_state),
            "ranks_never_seen": never,
            "world_size": self.cfg.world_size,
            "per_rank": per_rank,
            "duration_s": round(now - self.t0, 3),
            "reasons": self.reasons,
            "health": {str(r): h for r, h in self.health_snapshot.items()},
            "stragglers_seen": sorted(self.stragglers_seen),
        }

    def finalize(self, reason: str | None = None) -> dict[str, Any]:
        """Emit everything pending, write the final state and report, close the store."""
        now = time.time()
        if self.cfg.spool_root and Path(self.cfg.spool_root).is_dir():
            self.recover_spools(Path(self.cfg.spool_root))
        self.emit(now, force=True)
        self.update_health(now)
        if reason:
            self.reasons.append(reason)
        for r in range(self.cfg.world_size):
            st = self.rank_state.get(r)
            if st == "live":
                last = self.health.ranks[r].last_step if r in self.health.ranks else -1
                self.txn.events.append(
                    (now, "rank_lost", r, f"rank {r} did not close before the run ended (last step {last})")
                )
            if st is None:
                self.reasons.append(f"rank {r} never connected")
            elif st in ("live", "lost"):
                self.reasons.append(f"rank {r} did not close (last state: {st})")
        state = "failed" if self.reasons else "finished"
        self._write_field("sys/state", ("str", state), SYSTEM_RANK, now)
        self.commit()
        rep = self.report(now)
        rep["state"] = state
        self._close_forwarders(rep, state)
        self.store.finish_run(state, rep, now)
        self.store.close()
        self._lock.release()
        return rep

    def _close_forwarders(self, rep: dict[str, Any], state: str) -> None:
        """Let each forwarder catch up (bounded), finish the tracker's run, and report it.

        A tracker problem does not fail the run: the journal has everything, and
        ``coordinator sync <run> --to <backend>`` resumes from the forwarder's cursor.
        """
        deadline = time.monotonic() + self.cfg.forward_timeout_s
        for f in self.forwarders:
            try:
                rep.setdefault("forwarders", {})[f.backend_name] = f.close(
                    max(0.0, deadline - time.monotonic()), final_state=state
                )
            except SinkError as e:
                rep.setdefault("forwarders", {})[f.backend_name] = {**f.stats(), "error": str(e)}
                _log.error("%s (resume with `coordinator sync %s --to %s`)", e, self.cfg.run_id, f.backend_name)

    def forwarder_warnings(self) -> None:
        """Send a forwarder's first error to rank 0 (logged there as a warning), once."""
        for f in self.forwarders:
            err = f.error or f.last_error
            if err and f.backend_name not in self._forwarder_warned:
                self._forwarder_warned.add(f.backend_name)
                inc = self.current.get(0)
                if inc is not None:
                    self.warnings_for.setdefault((0, inc), []).append(f"{f.backend_name} forwarder: {err}")

    def close(self) -> None:
        """Release the store and the writer lock without finishing the run (as a crash would)."""
        for f in self.forwarders:
            f.abort(1.0)
        self.store.close()
        self._lock.release()

    def take_warnings(self, rank: int, incarnation: int) -> list[str]:
        """Warnings addressed to a sender since its last ack."""
        return self.warnings_for.pop((rank, incarnation), [])


class _WriterLock:
    """An exclusive ``flock`` on the run directory: one writer (aggregator or upload) at a time.

    A restarted job's new aggregator waits here until the old one has finished its run end.
    The kernel drops the lock when the holder dies, so a SIGKILL never leaves it stuck.
    """

    def __init__(self, path: Path, timeout_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._f = open(path, "a+b")  # noqa: SIM115 - held for the aggregator's lifetime
        deadline = time.monotonic() + timeout_s
        warned = False
        while True:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._f.close()
                    raise SinkError(f"{path.parent}: another writer still holds the run after {timeout_s} s") from None
                if not warned:
                    _log.info("waiting for the previous writer of %s to finish", path.parent)
                    warned = True
                time.sleep(0.05)

    def release(self) -> None:
        if not self._f.closed:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()


# ---------------------------------------------------------------------- socket loop


class _Server:
    """Owns the ROUTER socket and the Aggregator; one thread."""

    def __init__(self, agg: Aggregator, endpoint: str) -> None:
        self.agg = agg
        self.endpoint = endpoint
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
        self.stopping = False
        self.replies: list[tuple[bytes, int, wire.Envelope, dict[str, Any]]] = []
        self.unroutable = 0

    def _reply(self, ident: bytes, kind: int, env: wire.Envelope, payload: dict[str, Any]) -> None:
        self.replies.append((ident, kind, env, payload))

    def _flush_replies(self) -> None:
        for ident, kind, env, payload in self.replies:
            envelope = wire.encode_envelope(kind, self.agg.cfg.run_id, env.rank, env.incarnation, env.seq)
            try:
                self.sock.send_multipart([ident, envelope, wire.encode_map(payload)], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY); it will resend on reconnect
                self.unroutable += 1
                _log.debug("reply to rank %d unroutable: %s", env.rank, e)
        self.replies.clear()

    def handle(self, frames: list[bytes], now: float) -> None:
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
            if env.kind == wire.BATCH:
                agg.batch(env, payload, now)
                warnings = agg.take_warnings(env.rank, env.incarnation)
                self._reply(ident, wire.ACK, env, {"w": warnings} if warnings else {})
            elif env.kind == wire.PING:
                agg.sender(env)  # an unknown sender (we restarted) is told to say HELLO again
                agg.touch(env, now)
                self._reply(ident, wire.PONG, env, {})
            elif env.kind == wire.HELLO:
                self._reply(ident, wire.WELCOME, env, agg.hello(env, wire.decode_map(payload, 4096), now))
            elif env.kind == wire.STATE:
                agg.touch(env, now)
                self._reply(ident, wire.STATE_REPLY, env, {"q": wire.decode_map(payload, 4096)})  # filled after commit
            elif env.kind == wire.QUERY:
                self._reply(ident, wire.QUERY_REPLY, env, {"q": wire.decode_map(payload, 4096)})
            elif env.kind == wire.BYE:
                agg.bye(env, wire.decode_map(payload, 4096), now)
                self._reply(ident, wire.BYE_ACK, env, {})
            else:
                raise ProtocolError(f"unexpected {wire.kind_name(env.kind)} from a rank", code="bad_kind")
        except ProtocolError as e:
            if e.code not in ("gap", "hello"):
                agg.counters["bad_frames"] += 1
            _log.warning("rank %d: %s %s rejected: %s", env.rank, wire.kind_name(env.kind), env.seq, e)
            snd = agg.senders.get((env.rank, env.incarnation))
            expected = snd.last_seq + 1 if snd is not None else 1
            self._reply(
                ident, wire.ERROR, env, {"code": e.code, "message": str(e), "expected": expected, "re": env.kind}
            )

    def _fill_reads(self) -> None:
        """STATE and QUERY replies read committed data, so they are built after the commit."""
        journal = self.agg.store.max_chunk_id() if self.agg.forwarders else None
        for i, (ident, kind, env, payload) in enumerate(self.replies):
            if kind == wire.STATE_REPLY:
                if payload.get("q", {}).get("forward"):
                    self.replies[i] = (ident, kind, env, {"forward": self.agg.forward_positions()})
                else:
                    self.replies[i] = (ident, kind, env, self.agg.state())
            elif kind == wire.ACK and journal is not None:
                payload["j"] = journal
            elif kind == wire.QUERY_REPLY:
                try:
                    self.replies[i] = (ident, kind, env, self.agg.query(payload["q"]))
                except ProtocolError as e:
                    self.replies[i] = (ident, wire.ERROR, env, {"code": e.code, "message": str(e), "re": env.kind})

    def serve(self) -> dict[str, Any]:
        agg = self.agg
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        last_sweep = 0.0
        last_health = 0.0
        last_commit = 0.0
        commit_failures = 0
        while True:
            idle_ms = 50 if not agg.reducer.pending_groups() else 20
            if self.replies:  # acks are due at the next group commit
                idle_ms = max(0, math.ceil((last_commit + _COMMIT_INTERVAL_S - time.monotonic()) * 1000))
            events = dict(poller.poll(idle_ms))
            now = time.time()
            taken = 0
            if self.sock in events:
                # Bounded rounds: commit (and ack) every few MB so memory and ack latency stay flat
                # when the ranks are ahead; the rest waits in the socket, then in the ranks' spools.
                for _ in range(2_000):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.handle(frames, now)
                    taken += sum(len(f) for f in frames)
                    if taken > _ROUND_BYTES:
                        break
            # Group commit: one transaction (and one round of acks) per few ms, however many ranks
            # sent in between. Fewer, larger commits leave more CPU to the training processes.
            if (
                self.replies
                and not self.stopping
                and taken <= _ROUND_BYTES
                and time.monotonic() - last_commit < _COMMIT_INTERVAL_S
            ):
                continue
            sweep = now - last_sweep > 0.25
            if sweep:
                last_sweep = now
                agg.check_liveness(now)
                if now - last_health >= 1.0:
                    last_health = now
                    agg.update_health(now)
                    agg.forwarder_warnings()
                if agg.cfg.parent_pid and os.getppid() != agg.cfg.parent_pid:
                    agg.parent_lost(now)
            agg.emit(now, all_keys=sweep)
            try:
                agg.commit()
                last_commit = time.monotonic()
                commit_failures = 0
            except SinkError as e:
                commit_failures += 1
                _log.error("store commit failed (attempt %d), not acking: %s", commit_failures, e)
                # No ack for uncommitted data: tell the senders why, so wait() raises with it.
                # The transaction is kept and retried; resends are duplicates of it.
                for i, (ident, kind, env, _) in enumerate(self.replies):
                    if kind in (wire.ACK, wire.BYE_ACK):
                        self.replies[i] = (ident, wire.ERROR, env, {"code": "sink", "message": str(e), "re": env.kind})
                self._flush_replies()
                time.sleep(min(0.05 * commit_failures, 1.0))
                if self.stopping and commit_failures > 20:
                    raise
                continue
            self._fill_reads()
            self._flush_replies()
            if self.stopping or agg.finished(now):
                break
        reason = (
            "aggregator stopped by a signal before every rank closed"
            if (self.stopping and not agg.finished(time.time()))
            else None
        )
        rep = agg.finalize(reason)
        self._flush_replies()
        return rep

    def close(self) -> None:
        self.sock.close(linger=1000)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def serve(cfg: AggregatorConfig) -> dict[str, Any]:
    """Bind, print ``READY <endpoint>`` on stdout, serve until the run ends; return the report."""
    agg = Aggregator(cfg)
    srv = _Server(agg, cfg.endpoint)
    for name, options in cfg.backends.items():
        f = Forwarder(cfg.store_path, name, options)
        agg.forwarders.append(f)
        f.start()

    def on_term(signum: int, _frame: object) -> None:
        _log.info("signal %d: draining and closing run %s", signum, cfg.run_id)
        srv.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; rank 0 decides
    sys.stdout.write(f"READY {srv.endpoint}\n")
    sys.stdout.flush()
    # Rank 0 stops reading our stdout after READY: anything a tracker client prints later (MLflow's
    # "View run ..." line) would hit a closed pipe. Send it to stderr with our log instead.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        rep = srv.serve()
    finally:
        srv.close()
    _log.info("run %s %s: %s", cfg.run_id, rep["state"], json.dumps(rep, sort_keys=True))
    return rep


def _parse(argv: list[str] | None) -> AggregatorConfig:
    p = argparse.ArgumentParser(prog="python -m coordinator.aggregator", description=__doc__)
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--config", required=True, help="JSON of the remaining AggregatorConfig fields")
    a = p.parse_args(argv)
    return AggregatorConfig(run_id=a.run, **json.loads(a.config))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the aggregator process."""
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get(_env.COORDINATOR_DEBUG) == "1" else logging.INFO,
        format="%(asctime)s coordinator.aggregator[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    cfg = _parse(argv)
    if cfg.nice:
        # Logging yields to training on a busy machine; falling behind only fills the ranks' spools.
        os.nice(cfg.nice)
    Path(cfg.store_path).parent.mkdir(parents=True, exist_ok=True)
    rep = serve(cfg)
    return 0 if rep["state"] == "finished" else 3
