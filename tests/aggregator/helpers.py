"""Helpers for driving an in-process Aggregator exactly as the server does: envelopes, batches, stores."""

from __future__ import annotations

import random
from array import array
from pathlib import Path
from typing import Any

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.aggregator.reduce import Emitted, Reducer
from coordinator.core.values import FieldValue
from coordinator.journal.store import LocalStore
from coordinator.transport import wire

RUN = "run-1"


def make_cfg(tmp_path: Path, world: int = 2, **kw: Any) -> AggregatorConfig:
    """A config storing in tmp_path/run.db."""
    return AggregatorConfig(run_id=RUN, store_path=str(tmp_path / "run.db"), world_size=world, **kw)


def env(kind: int, rank: int, inc: int, seq: int, run: str = RUN) -> wire.Envelope:
    """An envelope exactly as the server decodes it from the wire."""
    return wire.decode_envelope(wire.encode_envelope(kind, run, rank, inc, seq))


def payload(
    metrics: dict[str, dict[int, float]] | None = None, fields: dict[str, FieldValue] | None = None, ts: float = 1.0
) -> bytes:
    """A batch payload: {key: {step: value}} metrics and {path: (tag, value)} fields."""
    cols = [(k, array("q", list(p)), array("d", list(p.values()))) for k, p in (metrics or {}).items()]
    return wire.encode_batch(cols, list((fields or {}).items()), ts)


def hello(agg: Aggregator, rank: int, inc: int = 1, now: float = 1.0) -> dict[str, Any]:
    """Say HELLO for (rank, inc)."""
    return agg.hello(env(wire.HELLO, rank, inc, 0), {"pid": 100 + rank, "host": "h"}, now)


def batch(agg: Aggregator, rank: int, seq: int, inc: int = 1, now: float = 1.0, **kw: Any) -> str:
    """Send batch ``seq`` of (rank, inc)."""
    return agg.batch(env(wire.BATCH, rank, inc, seq), payload(**kw), now)


def bye(agg: Aggregator, rank: int, inc: int = 1, now: float = 1.0, undelivered: int = 0) -> None:
    """Say BYE for (rank, inc)."""
    agg.bye(env(wire.BYE, rank, inc, 0), {"undelivered": undelivered}, now)


def reopen(tmp_path: Path) -> LocalStore:
    """A read-only view of the run's store."""
    return LocalStore(tmp_path / "run.db", readonly=True)


def crash(a: Aggregator) -> None:
    """Simulate an aggregator crash after its last commit: drop it without finalize."""
    a.store.close()


def dump(out: dict[str, Emitted]) -> dict[str, tuple[bytes, bytes, bytes, int]]:
    """An emit's output in comparable form: per key, its steps, values and counts bytes and re-emitted count."""
    return {k: (e.steps.tobytes(), e.values.tobytes(), e.counts.tobytes(), e.reemitted) for k, e in out.items()}


def round_end(rng: random.Random, new: Reducer, old: Reducer, world: int, now: float, done: float) -> float:
    """The end of a round of a differential sequence: a rank done now and then (``done``: how often), time
    passing, and the two reducers' emits compared; returns the new time."""
    if rng.random() < done:
        r = rng.randrange(world)
        new.rank_done(r)
        old.rank_done(r)
    now += rng.choice([0.1, 1.0, 6.0])
    assert dump(new.emit(now)) == dump(old.emit(now))
    return now
