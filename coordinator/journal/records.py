"""What the journal holds and hands out: the rows one commit writes, the run row, a stored chunk.

Plain data shared by the writer (the aggregator), the readers (CLI, read-only runs) and the
forwarders; no SQL here.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.core.values import FieldValue
from coordinator.journal.texts import TextRow

__all__ = ["MAIN_RANK", "ChunkRow", "RunInfo", "StagedBlock", "StoredChunk", "TxnData"]

MAIN_RANK = -1
"""Rank value of the reduced main series."""


@dataclass(slots=True)
class ChunkRow:
    """One columnar chunk to insert."""

    key: str
    rank: int
    incarnation: int
    seq: int
    ts: float
    steps: array[int]
    values: array[float]
    counts: array[int] | None = None


@dataclass(slots=True)
class StagedBlock:
    """Points of several keys that share their steps: one steps array, one row of values per key.

    A rank's keys logged together (staged or written as rank rows), or a key group's main-series
    points (``rank`` ``MAIN_RANK``, ``counts`` set: written as chunk rows, never staged).
    """

    keys: tuple[str, ...]
    rank: int
    incarnation: int
    seq: int
    ts: float
    steps: array[int]
    values: npt.NDArray[np.float64]
    """Shape (len(keys), len(steps))."""
    counts: array[int] | None = None
    """Main series: how many ranks contributed to each step (the same for every key)."""


@dataclass(slots=True)
class TxnData:
    """Everything one aggregator commit writes, atomically."""

    chunks: list[ChunkRow | StagedBlock] = field(default_factory=list)
    """Chunk rows written after ``rank_rows`` (the main series: a key group's block as one row per key)."""
    fields: list[tuple[str, FieldValue, int, float]] = field(default_factory=list)
    """(path, value, rank, ts) upserts."""
    conflicts: list[tuple[str, int, FieldValue, int, float]] = field(default_factory=list)
    """(path, rank, rejected value, kept rank, ts)."""
    senders: dict[tuple[int, int], tuple[int, int, int, float, float, str, int | None, str | None]] = field(
        default_factory=dict
    )
    """(rank, incarnation) -> (last_seq, points, batches, first_seen, last_seen, state, pid, host)."""
    events: list[tuple[float, str, int | None, str]] = field(default_factory=list)
    key_policies: dict[str, str] = field(default_factory=dict)
    """New keys and their reduction policy."""
    meta: dict[str, str] = field(default_factory=dict)
    """Meta-table upserts (saved counters)."""
    texts: list[TextRow] = field(default_factory=list)
    """Points of text series (their keys are in ``key_policies`` with policy ``text`` when new)."""
    rank_rows: list[ChunkRow | StagedBlock] = field(default_factory=list)
    """Rank chunks and blocks written as chunk rows (a block as one row per key), in order, before ``chunks``."""
    staged: list[ChunkRow | StagedBlock] = field(default_factory=list)
    """Rank chunks (and blocks) written as ONE row of the staging log (:mod:`coordinator.journal.staging`)."""
    unstage: bool = False
    """Delete every staged row: their points are in ``chunks`` of this transaction (materialized)."""

    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not (
            self.chunks
            or self.rank_rows
            or self.staged
            or self.unstage
            or self.texts
            or self.fields
            or self.conflicts
            or self.senders
            or self.events
            or self.key_policies
        )


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The run row plus where it lives."""

    id: str
    project: str
    name: str
    created: float
    ended: float | None
    state: str
    world_size: int
    report: dict[str, Any] | None
    path: Path


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One committed chunk as the forwarder reads it (journal order = ``id`` order)."""

    id: int
    """Row id: increases with every commit (one writer), so it is a cursor."""
    key: str
    rank: int
    """A training rank, or ``MAIN_RANK`` for the reduced main series."""
    incarnation: int
    ts: float
    """Time of the batch (the rank's batch time; for the main series, when it was emitted)."""
    steps: array[int]
    values: array[float]
