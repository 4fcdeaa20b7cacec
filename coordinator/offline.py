"""Upload of offline runs: replay the ranks' spools through the aggregator core into the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordinator import wire
from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.errors import ConfigError, ProtocolError
from coordinator.sinks.local import run_dir
from coordinator.spool import SpoolRecord, read_spool

__all__ = ["offline_dir", "upload_offline"]

_log = logging.getLogger(__name__)


def offline_dir(root: Path, run_id: str) -> Path:
    """Where the ranks of an offline run spool their batches."""
    return root / "offline" / run_id


def _round_robin(files: list[Path]) -> Iterator[SpoolRecord]:
    """Interleave the ranks' records so cross-rank groups complete as they go."""
    its = [read_spool(f) for f in files]
    while its:
        alive = []
        for it in its:
            rec = next(it, None)
            if rec is not None:
                yield rec
                alive.append(it)
        its = alive


def upload_offline(root: Path, run_id: str) -> dict[str, Any]:
    """Ingest an offline run's spools into the store; returns the final report.

    Safe to repeat: batches already in the store are recognised by their sequence numbers
    and skipped, so nothing is doubled.

    Raises:
        ConfigError: no offline data for ``run_id``.
    """
    d = offline_dir(root, run_id)
    meta_file = d / "run.meta"
    if not meta_file.exists():
        raise ConfigError(f"no offline run {run_id!r} under {root} (expected {meta_file})")
    meta_rec = next(read_spool(meta_file), None)
    if meta_rec is None:
        raise ConfigError(f"{meta_file} is empty or corrupt")
    meta = wire.decode_map(meta_rec.payload)
    cfg = AggregatorConfig(
        run_id=run_id,
        store_path=str(run_dir(root, run_id) / "run.db"),
        world_size=int(meta["world_size"]),
        project=str(meta.get("project", "default")),
        name=str(meta.get("name", run_id)),
        policies=dict(meta.get("policies", {})),
        default_policy=str(meta.get("default_policy", "mean")),
        stop_grace_s=0.0,
    )
    agg = Aggregator(cfg)
    files = sorted(d.glob("rank-*.spool"))
    for n, rec in enumerate(_round_robin(files), 1):
        now = time.time()
        try:
            env = wire.decode_envelope(rec.envelope)
            if env.kind == wire.HELLO:
                agg.hello(env, wire.decode_map(rec.payload, 4096), now)
            elif env.kind == wire.BATCH:
                agg.batch(env, rec.payload, now)
            elif env.kind == wire.BYE:
                agg.bye(env, wire.decode_map(rec.payload, 4096), now)
        except ProtocolError as e:
            agg.counters["bad_frames"] += 1
            _log.warning("offline run %s: skipped a bad record: %s", run_id, e)
        if n % 256 == 0:
            agg.emit(now)
            agg.commit()
    agg.emit(time.time())
    agg.commit()
    return agg.finalize()
