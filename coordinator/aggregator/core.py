"""The aggregator itself: ingest each batch, reduce across ranks, commit to the journal; no socket.

:class:`Aggregator` composes the parts (sender registry, fields, reducer, health, liveness) around
one open transaction and runs the hot path itself. The socket loop
(:mod:`coordinator.aggregator.server`) drives it in the aggregator process; an upload
(:mod:`coordinator.aggregator.recovery`) drives it in-process.
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from itertools import repeat
from pathlib import Path
from typing import Any

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.counters import Report, load_counters
from coordinator.aggregator.fields import SYSTEM_RANK, FieldTable
from coordinator.aggregator.forwarding import Forwarders
from coordinator.aggregator.health import Health, HealthFields
from coordinator.aggregator.liveness import Liveness
from coordinator.aggregator.lock import WriterLock
from coordinator.aggregator.outbox import MainHold, Outbox
from coordinator.aggregator.reduce import Reducer
from coordinator.aggregator.report import build_report, close_out
from coordinator.aggregator.senders import LastSteps, Sender, Senders
from coordinator.core.columns import step_range
from coordinator.core.incarnations import is_replaced
from coordinator.core.policies import POLICY_PREFIX, PolicyTable
from coordinator.errors import ProtocolError, SinkError
from coordinator.journal.store import TEXT_POLICY, LocalStore, TextRow, TxnData
from coordinator.transport import wire

__all__ = ["Aggregator"]

_log = logging.getLogger("coordinator.aggregator")

_MAX_BLOCKS_SEEN = 1024  # key tuples a sender's blocks_seen holds at most (then: checked key by key)


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
        self._lock = WriterLock(Path(cfg.store_path).parent / "writer.lock", lock_timeout_s)
        store: LocalStore | None = None
        try:
            self.store = store = LocalStore(cfg.store_path, durable=cfg.durable)
            self._open_run()
        except BaseException:  # nothing is left open or locked for the caller, who cannot close us
            if store is not None:
                store.close()
            self._lock.release()
            raise

    def _open_run(self) -> None:
        """Create or reopen the run in the store and restore what a previous aggregator left."""
        cfg = self.cfg
        try:
            previous = self.store.run_info().state
        except SinkError:
            previous = None  # a new run
        self.store.create_run(cfg.run_id, cfg.project, cfg.name or cfg.run_id, cfg.world_size, time.time())
        self.t0 = self.store.run_info().created  # a restarted aggregator keeps the run's creation time
        # spool_root: where the ranks spool, so `sync`, `purge` and `top` find it without being told.
        config = {"policies": cfg.policies, "default_policy": cfg.default_policy, "spool_root": cfg.spool_root}
        self.store.set_meta("config", json.dumps(config))
        self.counters = load_counters(self.store.meta("counters"))
        self.reasons: list[str] = []
        """Why the run failed (empty: it finished)."""
        self.outbox = Outbox()
        self.held = MainHold()
        """Emitted main-series groups not yet in the transaction (``emit(hold=True)``)."""
        self.policy = PolicyTable(cfg.policies, cfg.default_policy)
        self.reducer = Reducer(cfg.world_size, self.policy, cfg.group_timeout_s)
        self.registry = Senders(cfg, self.outbox, self.counters, self.reducer, self.reasons)
        self.senders = self.registry.senders
        self.current = self.registry.current
        self.rank_state = self.registry.rank_state
        self.fields = FieldTable(self.outbox, self.counters, self.current)
        self.health = Health(cfg.world_size, cfg.straggler_lag_s, cfg.flush_interval_s)
        self.health_fields = HealthFields(self.health, self.fields, self.outbox)
        self.liveness = Liveness(cfg, self.registry, self.reducer, self.health, self.outbox, self.reasons)
        self.forwarders = Forwarders(cfg.run_id)
        """Started by the serving process only (an offline upload does not forward)."""
        self.known_keys: set[str] = set(self.store.key_policies())
        self.text_keys: set[str] = set(self.store.text_keys())
        """Keys of text series: a key is numeric or text for the whole run (a rank mixing them is refused)."""
        self._checked_keys: set[str] = set()
        """Keys some decoded batch carried: valid, so ``decode_batch`` does not check them again."""
        self._shapes: wire.KeyShapes = {}
        """Key tuples of decoded blocks: one tuple object per dict of keys (see ``decode_batch``)."""
        self._kind_warned: set[tuple[int, int, str]] = set()
        self.last: dict[str, tuple[int, float]] = {}
        """key -> its main series' last (step, value)."""
        self.reads_ranks = False
        """Something this round did needs the rank chunks written at the next commit (a rewind, a new incarnation)."""
        self._restore()
        if previous is not None:
            kind = "aggregator_restarted" if previous == "running" else "run_reopened"
            detail = f"the run was {previous!r}; state recovered from the store"
            if self.store.unstaged_points:
                detail += f" ({self.store.unstaged_points} staged rank points written as chunks)"
            self.outbox.event(time.time(), kind, None, detail)
        self.fields.write_identity(cfg.run_id, cfg.name or cfg.run_id, cfg.project, cfg.world_size, self.t0)

    @property
    def txn(self) -> TxnData:
        """The open transaction (what the next :meth:`commit` writes)."""
        return self.outbox.txn

    def _restore(self) -> None:
        """Reload high-water marks, fields and what is pending, so a restarted aggregator drops resends.

        Only the steps after what was emitted are read back (per-chunk summaries tell which
        chunks reach past it), never every stored point.
        """
        now = time.time()
        self.registry.restore(self.store.senders(), now)
        self.fields.restore(self.store.fields(), self.store.field_writers())
        steps_of = self.registry.steps_of
        for key in self.store.key_policies():
            main, chunks = self.store.restore_view(key)
            self.reducer.restore(key, -1 if main is None else main[0], chunks, now)
            if main is not None:
                self.last[key] = main
            for rank, step in self.reducer.last_logged(chunks).items():
                steps_of(rank).note(key, step)
        for t in self.store.text_summary():
            steps_of(t["rank"]).note(t["key"], t["last_step"])

    # ------------------------------------------------------------- messages

    def hello(
        self, env: wire.Envelope, info: dict[str, Any], now: float, *, recovering: bool = False
    ) -> dict[str, Any]:
        """Register a sender; returns the WELCOME payload (see :meth:`.Senders.hello`)."""
        if (env.rank, env.incarnation) not in self.senders:
            self.reads_ranks = True  # a new incarnation: its rank's chunks are written before it is welcomed
        return self.registry.hello(env, info, now, recovering=recovering)

    def sender(self, env: wire.Envelope, *, recovering: bool = False) -> Sender:
        """The registered sender of ``env`` (see :meth:`.Senders.sender`)."""
        return self.registry.sender(env, recovering=recovering)

    def bye(self, env: wire.Envelope, info: dict[str, Any], now: float) -> None:
        """A rank closed; records what it says it could not deliver."""
        self.registry.bye(env, info, now)

    def touch(self, env: wire.Envelope, now: float) -> None:
        """Record liveness (heartbeat)."""
        self.registry.touch(env, now)

    def batch(self, env: wire.Envelope, payload: bytes, now: float, *, recovering: bool = False) -> str:
        """Ingest one batch; returns ``"new"`` or ``"duplicate"`` (ack both after commit).

        Raises:
            ProtocolError: unknown/fenced sender, a sequence gap (``code="gap"``), a bad payload.
        """
        snd = self.registry.admit(env, now, recovering=recovering)
        if snd is None:
            return "duplicate"
        try:
            b = wire.decode_batch(payload, self._checked_keys, blocks=True, shapes=self._shapes)
        except ProtocolError:
            self.counters["bad_frames"] += 1
            raise
        self._ingest(snd, env.seq, b, now)
        return "new"

    def _ingest(self, snd: Sender, seq: int, b: wire.Batch, now: float) -> None:
        rank = snd.rank
        txn = self.outbox.txn
        last_steps = self.registry.steps_of(rank)
        n = 0
        if b.fields and any(p.startswith(POLICY_PREFIX) for p, _ in b.fields):
            b.fields = self.fields.take_policies(b.fields, rank, now, self.policy, self.known_keys)
        metrics = b.metrics
        reached = [step_range(blk.steps)[1] for blk in b.blocks if not all(k.startswith("system/") for k in blk.keys)]
        for blk in b.blocks:
            ks = blk.keys
            if ks in snd.blocks_seen or self.known_keys.issuperset(ks) or self.text_keys.isdisjoint(ks):
                n += self.ingest_block(snd, seq, b.ts, blk, last_steps, now)
            else:  # a key of the other kind: refused key by key, as unblocked chunks are
                metrics = metrics + [
                    (k, array("q", blk.steps), array("d", v.tobytes()))
                    for k, v in zip(blk.keys, blk.values, strict=True)
                ]
        for key, steps, values in metrics:
            if key not in self.known_keys:
                if key in self.text_keys:
                    self._wrong_kind(snd, key, "numbers", len(steps), now)
                    continue
                self.known_keys.add(key)
                txn.key_policies[key] = self.policy(key)
            self.outbox.chunk(key, rank, snd.incarnation, seq, b.ts, steps, values)
            if key not in snd.keys_seen:
                snd.keys_seen.add(key)
                if snd.resumed:
                    self._maybe_rewind(snd, key, step_range(steps)[0], now)
            if not snd.superseded:
                if self.reducer.add_series(key, rank, steps, values, now) and key not in snd.repeated_keys:
                    self._warn_repeat(snd, key)
                if steps:
                    last_steps.note(key, steps[-1])
            n += len(steps)
        if b.texts:
            n += self._ingest_texts(snd, b, last_steps, now)
        # Training progress: the sampler's system/* series (client/system.py) step on while a rank hangs.
        reached += [step_range(steps)[1] for key, steps, _ in b.metrics if steps and not key.startswith("system/")]
        if reached and not snd.superseded:
            self.health.progress(rank, max(reached), now)
        for path, fv in b.fields:
            self.fields.write(path, fv, rank, b.ts)
        snd.last_seq = seq
        snd.points += n
        snd.batches += 1
        self.counters["batches"] += 1
        self.counters["points"] += n
        self.registry.persist(snd)

    def ingest_block(self, snd: Sender, seq: int, ts: float, blk: wire.Block, last_steps: LastSteps, now: float) -> int:
        """The per-key steps of :meth:`_ingest` for a block, once for all its keys; returns its points.

        Also a ring's rows (:mod:`.rings`), which come in no batch: ``seq`` 0."""
        keys, steps = blk.keys, blk.steps
        seen = keys in snd.blocks_seen  # then every key is known and seen by this sender already
        if not seen and not self.known_keys.issuperset(keys):
            for key in keys:
                if key not in self.known_keys:
                    self.known_keys.add(key)
                    self.outbox.txn.key_policies[key] = self.policy(key)
        self.outbox.block(keys, snd.rank, snd.incarnation, seq, ts, steps, blk.values)
        if not seen:
            for key in keys:
                if key not in snd.keys_seen:
                    snd.keys_seen.add(key)
                    if snd.resumed:
                        self._maybe_rewind(snd, key, step_range(steps)[0], now)
            if len(snd.blocks_seen) < _MAX_BLOCKS_SEEN:
                snd.blocks_seen.add(keys)
        if not snd.superseded:
            for key in self.reducer.add_block(keys, snd.rank, steps, blk.values, now):
                if key not in snd.repeated_keys:
                    self._warn_repeat(snd, key)
            last_steps.note_block(keys, steps[-1])
        return blk.points

    def _ingest_texts(self, snd: Sender, b: wire.Batch, last_steps: LastSteps, now: float) -> int:
        """Put a batch's texts into the transaction (per rank, no reduction); returns how many were stored."""
        n = 0
        for key, steps, texts in b.texts:
            if key not in self.text_keys:
                if key in self.known_keys:
                    self._wrong_kind(snd, key, "texts", len(steps), now)
                    continue
                self.text_keys.add(key)
                self.outbox.txn.key_policies[key] = TEXT_POLICY
            self.outbox.txn.texts.append(TextRow(key, snd.rank, snd.incarnation, b.ts, steps.tolist(), texts))
            if not snd.superseded:
                last_steps.note(key, steps[-1])
            n += len(steps)
        self.counters["texts"] += n
        return n

    def _wrong_kind(self, snd: Sender, key: str, got: str, points: int, now: float) -> None:
        """A rank sent ``got`` for a key that is the other kind in this run: refused, counted, told once."""
        self.counters["kind_conflicts"] += points
        if (snd.rank, snd.incarnation, key) in self._kind_warned:
            return
        self._kind_warned.add((snd.rank, snd.incarnation, key))
        kind = "a text series" if key in self.text_keys else "a numeric series"
        msg = (
            f"{key!r} is {kind} in this run; rank {snd.rank} sent {got} for it, which are not stored "
            "(counted in the report's kind_conflicts; a key is numeric or text for the whole run)"
        )
        _log.error("%s", msg)
        self.outbox.event(now, "kind_conflict", snd.rank, msg)
        self.outbox.warn(snd.rank, snd.incarnation, msg)

    def _maybe_rewind(self, snd: Sender, key: str, first: int, now: float) -> None:
        """A later incarnation's first step of ``key``: the rank's earlier steps from there on are replaced."""
        top = self.reducer.maxstep(key, snd.rank)
        if top is None or not is_replaced(top, first):
            return  # nothing the rank logged for the key so far is at or after ``first``
        self.reducer.rewind(key, snd.rank, first)
        self.reads_ranks = True  # readers apply the replacement rule to the chunks: write them with this round
        self.counters["rewinds"] += 1
        detail = f"incarnation {snd.incarnation} re-logs {key!r} from step {first}"
        self.outbox.event(now, "rank_resumed", snd.rank, detail)
        msg = "rank %d (incarnation %d) resumed %r at step %d: later steps are replaced"
        _log.info(msg, snd.rank, snd.incarnation, key, first)

    def _warn_repeat(self, snd: Sender, key: str) -> None:
        """The first repeated step of ``key`` by this sender: tell its rank (once per key)."""
        snd.repeated_keys.add(key)
        msg = (
            f"{key!r}: rank {snd.rank} logged a step it had already logged; the later value replaces "
            "the earlier one (counted in replaced_points; further repeats of this key are not warned about)"
        )
        _log.warning("%s", msg)
        self.outbox.warn(snd.rank, snd.incarnation, msg)

    def take_warnings(self, rank: int, incarnation: int) -> list[str]:
        """Warnings addressed to a sender since its last ack."""
        return self.outbox.take_warnings(rank, incarnation)

    # ------------------------------------------------------------- reads

    def state(self) -> dict[str, Any]:
        """Everything ``sync()`` shows a rank: fields, last main values, rank states."""
        return {
            "fields": self.fields.as_state(),
            "last": {k: [s, v] for k, (s, v) in self.last.items()},
            "ranks": {str(r): st for r, st in self.rank_state.items()},
        }

    def forward_positions(self) -> dict[str, list[Any]]:
        """Each forwarder's journal cursor and its fatal error (None while it is healthy)."""
        return self.forwarders.positions()

    # ------------------------------------------------------------- periodic

    def emit(self, now: float, *, force: bool = False, all_keys: bool = False, hold: bool = False) -> None:
        """Move complete (or timed-out) groups into the transaction as main-series chunks.

        Args:
            now: the current time.
            force: emit every pending group (run end).
            all_keys: check every key for timed-out groups, not only those that got points.
            hold: keep the emitted groups in memory (:class:`~coordinator.aggregator.outbox.MainHold`)
                until they are old or many enough, so a key's main series is written as fewer,
                larger chunks. Without it, everything held so far is written too.
        """
        held = self.held
        txn = self.outbox.txn
        out, blocks = self.reducer.emit_blocks(now, force=force, all_keys=all_keys)
        for key, e in out.items():
            self.last[key] = (e.steps[-1], e.values[-1])
            if e.reemitted:
                # A re-emitted step goes in a chunk of its own, after what is held, as without a
                # hold: a chunk's last step stays the last one emitted (what a restart resumes from).
                held.write(txn, self.counters, key)
                held.add(key, e, now)
                held.write(txn, self.counters, key)
            else:
                held.add(key, e, now)
        for b in blocks:
            self.last.update(zip(b.keys, zip(repeat(b.steps[-1]), b.values[:, -1].tolist(), strict=False), strict=True))
            held.add_block(b, now)
        if not hold or held.due(now):
            held.write(txn, self.counters)

    def update_health(self, now: float) -> None:
        """Publish each rank's progress as ``sys/ranks/<r>/*`` fields and ``sys/stragglers``."""
        self.health_fields.update(now, self.rank_state)

    def check_liveness(self, now: float) -> None:
        """Mark ranks lost: silent past the liveness timeout, or (same host) their process is gone."""
        self.liveness.check(now)

    def parent_lost(self, now: float) -> None:
        """Rank 0's process died: stop waiting for it, record why."""
        self.liveness.parent_lost(now)

    def finished(self, now: float) -> bool:
        """True once rank 0 closed (or died) and every rank closed, was lost, or never came."""
        return self.liveness.finished(now)

    def forwarder_warnings(self) -> None:
        """Send a forwarder's first error to rank 0 (logged there as a warning), once."""
        self.forwarders.warn_first_errors(self.outbox, self.current.get(0))

    def commit(self, *, stage: bool = False, now: float | None = None) -> None:
        """Commit the open transaction (raises SinkError and keeps it for a retry on failure).

        Args:
            stage: stage the round's rank points (:mod:`~coordinator.aggregator.rankhold`) unless
                :attr:`reads_ranks`; without it everything held is written as chunks too.
            now: the hold's clock (``time.monotonic()``).
        """
        stage = stage and not self.reads_ranks
        self.counters["checkpoint_failures"] += self.store.take_checkpoint_failures()
        self.outbox.commit(self.store, self.counters, stage=stage, now=time.monotonic() if now is None else now)
        self.reads_ranks = False

    # ------------------------------------------------------------- end

    def finalize(self, reason: str | None = None) -> Report:
        """Emit everything pending, write the final state and report, close the store.

        What lost ranks left in their spools is not read here: the caller recovers it first
        (:func:`coordinator.aggregator.recovery.recover_spools`).

        Args:
            reason: why the run is being ended before every rank closed (the aggregator was
                stopped by a signal): ranks still live then count as interrupted.
        """
        now = time.time()
        self.emit(now, force=True)
        self.update_health(now)
        if reason:
            self.reasons.append(reason)
        state, failed, interrupted = close_out(
            self.registry, self.health, self.cfg.world_size, now, self.outbox, self.reasons, stopped=bool(reason)
        )
        self.fields.write("sys/state", ("str", state), SYSTEM_RANK, now)
        self.commit()
        rep = build_report(
            counters=self.counters,
            senders=self.registry,
            reducer=self.reducer,
            health=self.health_fields,
            world_size=self.cfg.world_size,
            duration_s=now - self.t0,
            reasons=self.reasons,
            state=state,
            failed_ranks=failed,
            interrupted_ranks=interrupted,
        )
        if self.forwarders:
            rep["forwarders"] = self.forwarders.close(self.cfg.forward_timeout_s, state)
        self.store.finish_run(state, dict(rep), now)
        self.store.close()
        self._lock.release()
        return rep

    def close(self) -> None:
        """Release the store and the writer lock without finishing the run (as a crash would)."""
        self.forwarders.abort()
        self.store.close()
        self._lock.release()
