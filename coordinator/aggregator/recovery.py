"""Spool recovery: replay what ranks left in their spools into the run's journal.

At the run's end the serving aggregator recovers the spools of ranks that stopped sending (lost,
or closed with points undelivered); after the job, :func:`replay_spools` (``coordinator sync``)
ingests an offline run's spools or what a crashed job left, and finishes the run. Batches already
committed are recognised by sequence number and skipped, so replaying twice stores nothing twice;
each spool directory is removed once its batches are committed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.core import Aggregator
from coordinator.aggregator.counters import Report
from coordinator.aggregator.rings import recover_rings
from coordinator.errors import ConfigError, ProtocolError
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import LocalStore, run_dir
from coordinator.settings import DEFAULTS
from coordinator.transport import wire
from coordinator.transport.copyread import copy_batches, mark_replayed, read_copies
from coordinator.transport.spool import read_spool, spool_records

__all__ = ["recover_spools", "replay_spools"]

_log = logging.getLogger("coordinator.aggregator")

_COMMIT_EVERY = 256
"""Records replayed per commit: bounds the open transaction while a large spool is read."""
_MAX_MAP_BYTES = 4096
"""Largest HELLO or BYE payload, as on the wire."""
_CONFIG_FIELDS = ("world_size", "project", "name", "policies", "default_policy")
"""What an upload takes from the store or the offline metadata; the rest keeps its default."""


def recover_spools(agg: Aggregator, root: Path, *, skip_live: bool = True) -> int:
    """Ingest what ranks left in their spools under ``root`` into ``agg``; returns the points.

    Only for senders that are no longer sending (the run is ending, or an upload after the job).
    With ``skip_live``, the spools of senders still live, or closed with nothing undelivered (they
    remove their own empty spools), are left alone.
    """
    recovered = 0
    for d in sorted(root.glob("rank-*-*")):
        try:
            _, r, i = d.name.split("-")
            rank, inc = int(r), int(i)
        except ValueError:
            _log.warning("ignoring unexpected spool directory %s", d)
            continue
        known = agg.senders.get((rank, inc))
        if (
            skip_live
            and known is not None
            and (known.state == "live" or (known.state == "closed" and not known.undelivered))
        ):
            continue
        try:
            recovered += _recover_dir(agg, d, rank, inc)
        except FileNotFoundError:
            continue  # the rank removed its (empty) spool while we looked: nothing to recover
    return recovered


def _recover_dir(agg: Aggregator, d: Path, rank: int, inc: int) -> int:
    before = agg.counters["points"]
    for n, rec in enumerate(spool_records(d), 1):
        now = time.time()
        try:
            _replay_record(agg, rec.envelope, rec.payload, rank, inc, now, d)
        except ProtocolError as e:
            agg.counters["bad_frames"] += 1
            _log.warning("spool %s: skipped a record: %s", d, e)
        if n % _COMMIT_EVERY == 0:
            agg.emit(now)
            agg.commit()
    _recover_copies(agg, d, rank, inc)
    got = agg.counters["points"] - before
    if got:
        agg.outbox.event(time.time(), "spool_recovered", rank, f"incarnation {inc}: {got} points from {d}")
        _log.info("recovered %d points of rank %d from its spool %s", got, rank, d)
    agg.counters["recovered_points"] += got
    agg.emit(time.time())
    agg.commit()
    shutil.rmtree(d, ignore_errors=True)
    return got


def _recover_copies(agg: Aggregator, d: Path, rank: int, inc: int) -> None:
    """The copied generations (:mod:`~coordinator.transport.copies`) the spool did not hold, as the next batches.

    Run after the spool's replay, so the sender's last batch number says what the spool held.
    Before a copy goes in, its file records the numbers it goes in as: replayed again (an upload
    that crashed after its commit), it is then skipped.
    """
    for c in read_copies(d):
        if c.torn:
            _log.warning(
                "copy file %s: a torn tail of %d bytes skipped (the rank was killed mid-write)", c.path, c.torn
            )
        snd = agg.senders.get((rank, inc))
        last = snd.last_seq if snd is not None else 0
        if c.seqs is not None and last >= c.seqs[1]:
            continue  # its batches are stored (from the spool, or sent and acknowledged)
        if c.seqs is not None and last >= c.seqs[0]:
            # Killed between two writes ahead of one cut: the spool holds its first batches, each
            # key's first points (a cut splits every key's points in order); the rest go in.
            held = _held_points(d, c.seqs[0], last)
            if held is None:
                msg = (
                    f"incarnation {inc}: generation {c.gen} was cut as batches {c.seqs[0]}-{c.seqs[1]}, of which "
                    f"the aggregator holds up to {last} but the spool not all: its {c.points} copied points are "
                    "not replayed (the rest of that generation is lost)"
                )
                _log.error("rank %d: %s", rank, msg)
                agg.outbox.event(time.time(), "copies_skipped", rank, msg)
                continue
            c.columns = {k: (st[held.get(k, 0) :], v[held.get(k, 0) :]) for k, (st, v) in c.columns.items()}
        payloads = copy_batches(c, DEFAULTS.max_batch_points)
        if not payloads:
            continue
        mark_replayed(c, last + 1, last + len(payloads))
        for payload in payloads:
            last += 1
            env = wire.encode_envelope(wire.BATCH, agg.cfg.run_id, rank, inc, last)
            try:
                _replay_record(agg, env, payload, rank, inc, time.time(), d)
            except ProtocolError as e:
                agg.counters["bad_frames"] += 1
                _log.warning("copy %s: a batch refused: %s", c.path, e)
        _log.info("rank %d: %d points of generation %d recovered from its copy %s", rank, c.points, c.gen, c.path)


def _held_points(d: Path, first: int, last: int) -> dict[str, int] | None:
    """Per key, the points spool batches ``first..last`` hold; None when one of them is not in the spool."""
    held: dict[str, int] = {}
    seen: set[int] = set()
    for rec in spool_records(d):
        if rec.kind == wire.BATCH and first <= rec.seq <= last and rec.seq not in seen:
            seen.add(rec.seq)
            for key, steps, _ in wire.decode_batch(rec.payload).metrics:
                held[key] = held.get(key, 0) + len(steps)
    return held if len(seen) == last - first + 1 else None


def _replay_record(agg: Aggregator, head: bytes, payload: bytes, rank: int, inc: int, now: float, d: Path) -> None:
    """One spool record, as if its sender had just sent it (an offline rank's spool holds its whole life)."""
    env = wire.decode_envelope(head)
    if (env.rank, env.incarnation) != (rank, inc) or env.run_id != agg.cfg.run_id:
        raise ProtocolError(f"record of rank {env.rank} in {d}")
    if env.kind == wire.HELLO:
        agg.hello(env, wire.decode_map(payload, _MAX_MAP_BYTES), now)
    elif env.kind == wire.BATCH:
        if (rank, inc) not in agg.senders:
            agg.hello(env, {}, now, recovering=True)
        agg.batch(env, payload, now, recovering=True)
    elif env.kind == wire.BYE:
        agg.bye(env, wire.decode_map(payload, _MAX_MAP_BYTES), now)


def _upload_config(root: Path, run_id: str) -> AggregatorConfig:
    """The run's config from its store, or for a never-stored offline run from its spool metadata."""
    db = run_dir(root, run_id) / "run.db"
    meta_file = spool_dir(root, run_id) / "run.meta"
    fields: dict[str, Any]
    if db.exists():
        s = LocalStore(db, readonly=True)
        try:
            info = s.run_info()
            saved = s.meta("config")
        finally:
            s.close()
        fields = json.loads(saved) if saved else {}
        fields.update(world_size=info.world_size, project=info.project, name=info.name)
    elif meta_file.exists():
        rec = next(read_spool(meta_file), None)
        if rec is None:
            raise ConfigError(f"{meta_file} is empty or corrupt")
        fields = wire.decode_map(rec.payload)
    else:
        raise ConfigError(f"nothing to upload for run {run_id!r} under {root} (no store and no {meta_file})")
    return AggregatorConfig(
        run_id=run_id,
        store_path=str(db),
        stop_grace_s=0.0,
        **{k: v for k, v in fields.items() if k in _CONFIG_FIELDS},
    )


def replay_spools(root: Path, run_id: str) -> Report:
    """Ingest a run's leftover spools into its store and finish the run; returns the final report.

    Use it after the job has ended (nothing may still be writing those spools). Safe to repeat.

    Args:
        root: the store root (``runs/`` and ``spool/`` are under it).
        run_id: the run.

    Raises:
        ConfigError: no store and no offline metadata for ``run_id``.
        SinkError: another writer still holds the run.
    """
    agg = Aggregator(_upload_config(root, run_id))
    sp = spool_dir(root, run_id)
    if sp.is_dir():
        recover_spools(agg, sp, skip_live=False)
    recover_rings(agg)
    agg.emit(time.time())
    agg.commit()
    return agg.finalize()
