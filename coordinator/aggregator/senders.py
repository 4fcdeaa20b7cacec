"""Who is sending: every (rank, incarnation), its high-water mark, and which incarnation is live.

Exactly-once rests here: a batch is new only when its sequence number is the sender's last one
plus one; anything at or below the high-water mark is a resend (dropped, acked again), anything
beyond it a gap (refused, so the sender resends from the mark). A rank's newer incarnation fences
the older ones: their late messages are refused instead of mixing two lives of one rank.

A lost sender that is heard from again (a batch or a ping, no new HELLO) is live again and its
rank is waited for again. A closing rank says how it ended (``ending``, ``reason``, ``traceback``:
see :mod:`coordinator.core.states`; a failed one is also a ``rank_failed`` event); a new
incarnation of a rank that has stored points is told the last step of each of its keys, so its
automatic steps continue after them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.counters import Counters
from coordinator.aggregator.outbox import Outbox
from coordinator.aggregator.reduce import Reducer
from coordinator.core.counters import UNDELIVERED
from coordinator.core.redact import redact_text
from coordinator.core.states import RankEnding
from coordinator.errors import ProtocolError
from coordinator.transport import wire

__all__ = ["LastSteps", "Sender", "Senders", "failure_detail"]

_log = logging.getLogger("coordinator.aggregator")

_MAX_COUNTER_NAME = 32
"""Longest name of a rank's own counter kept from its goodbye."""
_MAX_REASON = 4096
"""Longest reason kept from a rank's goodbye (characters)."""
_ENDINGS: tuple[RankEnding, ...] = ("clean", "failed", "interrupted")
_MAX_TRACEBACK = 16 * 1024
"""Longest traceback kept from a rank's goodbye (characters; its end is kept)."""
_EXC_REASON = re.compile(r"(?:uncaught in thread .*?: )?(?P<type>[A-Za-z_][\w.]*)(?:: (?P<msg>.*))?", re.S)
"""A reason made from an exception: ``[uncaught in thread T: ]Type[: message]``."""

_MAX_PENDING_BLOCKS = 64
"""Key tuples :class:`LastSteps` notes before it spreads them over their keys (bounds its memory)."""


class LastSteps:
    """One rank's last logged step per key, for the WELCOME of its next incarnation.

    Noted for every batch and read only when the rank comes back, so a block's keys are noted as
    one entry (the key tuple) and spread over the keys only when read or when a key is noted
    alone: noting a 100-key block key by key took two dict operations a key (15 µs hot, against
    1.4 µs for the one entry, ``timeit``).
    The latest note of a key wins, as if every key had been noted in order.
    """

    __slots__ = ("_blocks", "_keys")

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}
        self._blocks: dict[tuple[str, ...], int] = {}
        """Key tuple -> its last step, oldest note first (a tuple noted again moves to the end)."""

    def note(self, key: str, step: int) -> None:
        """``key`` was logged up to ``step``."""
        if self._blocks:
            self._spread()
        self._keys[key] = step

    def note_block(self, keys: tuple[str, ...], step: int) -> None:
        """Every key of ``keys`` was logged up to ``step``."""
        blocks = self._blocks
        if blocks.pop(keys, None) is None and len(blocks) >= _MAX_PENDING_BLOCKS:
            self._spread()
        blocks[keys] = step

    def snapshot(self) -> dict[str, int]:
        """Key -> last step (a copy)."""
        self._spread()
        return dict(self._keys)

    def _spread(self) -> None:
        for keys, step in self._blocks.items():
            self._keys.update(dict.fromkeys(keys, step))
        self._blocks.clear()


@dataclass(slots=True)
class Sender:
    """One incarnation of one rank, as the aggregator knows it."""

    rank: int
    incarnation: int
    last_seq: int
    """High-water mark: every batch up to it is committed (or in the open transaction)."""
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
    blocks_seen: set[tuple[str, ...]] = field(default_factory=set)
    """Key tuples of blocks it sent whose keys are all in :attr:`keys_seen` and known (checked once)."""
    client: dict[str, int] = field(default_factory=dict)
    """The rank's own delivery counters, from its goodbye."""
    heard: float = field(default_factory=time.monotonic)
    """When it was last heard from (``time.monotonic``: liveness does not follow the wall clock)."""
    ending: RankEnding | None = None
    """How it said it ended (its goodbye); None: it did not say goodbye."""
    reason: str = ""
    """Why it failed or was interrupted (its goodbye), or why it was marked lost."""
    repeated_keys: set[str] = field(default_factory=set)
    """Keys it logged a step of twice (warned once per key)."""
    resume_steps: dict[str, int] = field(default_factory=dict)
    """Its rank's last step per key over its earlier incarnations (sent with WELCOME)."""


class Senders:
    """The sender registry: handshake, admission of batches, goodbye, heartbeat; not thread-safe."""

    def __init__(
        self, cfg: AggregatorConfig, outbox: Outbox, counters: Counters, reducer: Reducer, reasons: list[str]
    ) -> None:
        self._run_id = cfg.run_id
        self._world_size = cfg.world_size
        self._restart = cfg.restart
        self._outbox = outbox
        self._counters = counters
        self._reducer = reducer
        self._reasons = reasons
        self.senders: dict[tuple[int, int], Sender] = {}
        self.current: dict[int, int] = {}
        """rank -> live incarnation."""
        self.rank_state: dict[int, str] = {}
        """rank -> state of its current incarnation (a rank never seen has none)."""
        self.rank0_bye_at: float | None = None
        """When rank 0 closed (or died): from then on the run ends once every rank is done."""
        self.last_steps: dict[int, LastSteps] = {}
        """rank -> the last step of each key it logged (its live incarnations; restored from the store)."""

    def steps_of(self, rank: int) -> LastSteps:
        """``rank``'s last steps (created empty)."""
        book = self.last_steps.get(rank)
        if book is None:
            book = self.last_steps[rank] = LastSteps()
        return book

    def restore(self, rows: list[dict[str, Any]], now: float) -> None:
        """Reload the stored senders (ordered by rank, first_seen) after a restart."""
        for s in rows:
            snd = Sender(
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
                self._reducer.rank_done(rank)
        if self._restart and self.rank_state.get(0) == "closed":
            # The job's rank 0 had closed before this aggregator's predecessor died: drain and
            # end. Not for a job resuming the run: its rank 0 has not said HELLO yet.
            self.rank0_bye_at = now

    def hello(
        self, env: wire.Envelope, info: dict[str, Any], now: float, *, recovering: bool = False
    ) -> dict[str, Any]:
        """Register a sender; returns the WELCOME payload (its high-water mark).

        With ``recovering``, the sender is registered for replaying its spool without becoming
        the rank's live incarnation.

        Raises:
            ProtocolError: another run (``wrong_run``), a rank outside the world (``bad_rank``),
                or a fenced incarnation (``fenced``).
        """
        self._check_run(env)
        if env.rank >= self._world_size:
            raise ProtocolError(f"rank {env.rank} is outside world size {self._world_size}", code="bad_rank")
        key = (env.rank, env.incarnation)
        snd = self.senders.get(key)
        if snd is not None and snd.state == "fenced" and not recovering:
            raise ProtocolError(f"rank {env.rank} incarnation {env.incarnation} was replaced", code="fenced")
        if snd is None:
            snd = self._register(env, info, now)
            if recovering:
                snd.superseded = self.current.get(env.rank, env.incarnation) != env.incarnation
                snd.state = "lost"
                self.persist(snd)
                return {"last_seq": 0}
        if recovering:
            return {"last_seq": snd.last_seq}
        self._make_current(env, now)
        snd.state = "live"
        snd.last_seen = now
        snd.heard = time.monotonic()
        self.persist(snd)
        _log.debug("hello rank %d incarnation %d (last seq %d)", env.rank, env.incarnation, snd.last_seq)
        welcome: dict[str, Any] = {"last_seq": snd.last_seq, "run_id": self._run_id, "protocol": wire.PROTOCOL}
        if snd.resume_steps:
            welcome["last_steps"] = snd.resume_steps
        return welcome

    def _register(self, env: wire.Envelope, info: dict[str, Any], now: float) -> Sender:
        pid, host = info.get("pid"), info.get("host")
        snd = self.senders[(env.rank, env.incarnation)] = Sender(
            env.rank,
            env.incarnation,
            0,
            now,
            now,
            pid if type(pid) is int else None,
            host if type(host) is str else None,
        )
        self._outbox.event(now, "rank_joined", env.rank, f"incarnation {env.incarnation} pid {snd.pid}")
        snd.resumed = any(r == env.rank and i != env.incarnation for (r, i) in self.senders)
        if snd.resumed:
            snd.resume_steps = self.steps_of(env.rank).snapshot()
        return snd

    def _make_current(self, env: wire.Envelope, now: float) -> None:
        """``env``'s incarnation becomes its rank's live one; an older live or lost one is fenced."""
        old = self.current.get(env.rank)
        if old is not None and old != env.incarnation:
            prev = self.senders[(env.rank, old)]
            if prev.state in ("live", "lost"):
                prev.state = "fenced"
                self.persist(prev)
            self._outbox.event(now, "rank_restarted", env.rank, f"incarnation {old} -> {env.incarnation}")
        self.current[env.rank] = env.incarnation
        self._reducer.done.discard(env.rank)
        self.rank_state[env.rank] = "live"

    def persist(self, s: Sender) -> None:
        """Write the sender's row (high-water mark, counts, state) with the open transaction."""
        self._outbox.txn.senders[(s.rank, s.incarnation)] = (
            s.last_seq,
            s.points,
            s.batches,
            s.first_seen,
            s.last_seen,
            s.state,
            s.pid,
            s.host,
        )

    def _check_run(self, env: wire.Envelope) -> None:
        if env.run_id != self._run_id:
            raise ProtocolError(f"this aggregator serves run {self._run_id!r}, not {env.run_id!r}", code="wrong_run")

    def sender(self, env: wire.Envelope, *, recovering: bool = False) -> Sender:
        """The registered sender of ``env``.

        Raises:
            ProtocolError: unknown (``code="hello"``: say HELLO first) or fenced sender.
        """
        self._check_run(env)
        snd = self.senders.get((env.rank, env.incarnation))
        if snd is None:
            self._counters["unknown_sender"] += 1
            raise ProtocolError("unknown sender: HELLO first", code="hello")
        if snd.state == "fenced" and not recovering:
            self._counters["fenced_batches"] += 1
            raise ProtocolError(
                f"rank {env.rank} incarnation {env.incarnation} was replaced by a newer incarnation",
                code="fenced",
            )
        return snd

    def admit(self, env: wire.Envelope, now: float, *, recovering: bool = False) -> Sender | None:
        """The sender of a batch that is next in its sequence; None for a resend (a duplicate).

        Raises:
            ProtocolError: unknown or fenced sender, or a sequence gap (``code="gap"``).
        """
        snd = self.sender(env, recovering=recovering)
        if not recovering:
            snd.last_seen = now
            snd.heard = time.monotonic()
            if snd.state == "lost":
                self._revive(snd, now)
        if env.seq <= snd.last_seq:
            self._counters["duplicate_batches"] += 1
            _log.debug("duplicate batch rank %d seq %d", env.rank, env.seq)
            return None
        if env.seq != snd.last_seq + 1:
            self._counters["gaps"] += 1
            raise ProtocolError(f"sequence gap: expected {snd.last_seq + 1}, got {env.seq}", code="gap")
        return snd

    def bye(self, env: wire.Envelope, info: dict[str, Any], now: float) -> None:
        """A rank closed; records its own counters, how it ended and what it could not deliver."""
        snd = self.sender(env)
        und = info.get(UNDELIVERED)
        snd.undelivered = und if type(und) is int and und >= 0 else 0
        snd.client = {k: v for k, v in info.items() if type(v) is int and v >= 0 and len(k) <= _MAX_COUNTER_NAME}
        snd.ending, snd.reason = _ending(info)
        snd.state = "closed"
        snd.last_seen = now
        snd.heard = time.monotonic()
        self.persist(snd)
        if self.current.get(env.rank) == env.incarnation:
            self.rank_state[env.rank] = "closed"
            self._reducer.rank_done(env.rank)
        detail = f"incarnation {env.incarnation}, {snd.points} points, ending {snd.ending}"
        if snd.reason:
            detail += f" ({snd.reason})"
        detail += f"; rank counters {json.dumps(snd.client)}"
        if snd.undelivered:
            detail += f", {snd.undelivered} points undelivered"
            self._reasons.append(f"rank {env.rank} closed with {snd.undelivered} points undelivered")
        self._outbox.event(now, "rank_closed", env.rank, detail)
        if snd.ending == "failed":
            self._outbox.event(now, "rank_failed", env.rank, failure_detail(snd.reason, info.get("traceback")))
        if env.rank == 0 and self.rank0_bye_at is None:
            self.rank0_bye_at = now

    def touch(self, env: wire.Envelope, now: float) -> None:
        """Record liveness (heartbeat); a lost sender that speaks again is live again."""
        snd = self.senders.get((env.rank, env.incarnation))
        if snd is not None:
            self.hear(snd, now)

    def hear(self, snd: Sender, now: float) -> None:
        """``snd`` was heard from (a message, or rows in its ring written after it was given up): live."""
        if snd.state in ("live", "lost"):
            snd.last_seen = now
            snd.heard = time.monotonic()
            if snd.state == "lost":
                self._revive(snd, now)

    def _revive(self, snd: Sender, now: float) -> None:
        """A lost sender is heard from again (no new HELLO): live again, its rank waited for again."""
        snd.state = "live"
        snd.reason = ""
        self.persist(snd)
        if self.current.get(snd.rank) != snd.incarnation:
            return
        self.rank_state[snd.rank] = "live"
        self._reducer.rank_back(snd.rank)
        self._counters["ranks_returned"] += 1
        msg = (
            f"rank {snd.rank} (incarnation {snd.incarnation}) is back after being marked lost; "
            "it is included in the main series again from the next unemitted step"
        )
        self._outbox.event(now, "rank_returned", snd.rank, msg)
        _log.warning("%s", msg)

    def mark_lost(self, snd: Sender, why: str) -> None:
        """``snd`` stopped sending without a goodbye; its rank is no longer waited for if it is current."""
        snd.state = "lost"
        snd.reason = why
        self.persist(snd)
        if self.current.get(snd.rank) == snd.incarnation:
            self.rank_state[snd.rank] = "lost"
            self._reducer.rank_done(snd.rank)


def failure_detail(reason: str, traceback: object) -> str:
    """A ``rank_failed`` event's detail: JSON ``{type, message, reason, traceback}``.

    ``type`` is the exception's type when the rank sent a traceback (``null`` for ``Run.fail("text")``).
    """
    tb = redact_text(traceback)[-_MAX_TRACEBACK:] if type(traceback) is str and traceback else None
    m = _EXC_REASON.fullmatch(reason) if tb is not None else None
    typ, msg = (m["type"], m["msg"] or "") if m is not None else (None, reason)
    return json.dumps({"type": typ, "message": msg, "reason": reason, "traceback": tb})


def _ending(info: dict[str, Any]) -> tuple[RankEnding, str]:
    """How a goodbye says its rank ended (absent: ``clean``, as older clients close), and why."""
    raw, why = info.get("ending", "clean"), info.get("reason")
    reason = redact_text(why)[:_MAX_REASON] if type(why) is str else ""
    for e in _ENDINGS:
        if raw == e:
            return e, reason
    return "failed", f"unknown ending {raw!r:.40}" + (f": {reason}" if reason else "")
