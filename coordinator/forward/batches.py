"""Building one batch for a backend from the journal: the main and per-rank series, fields, counts.

A batch is the chunks after the cursor (about ``batch_points`` points) turned into the backend's
series, sent (and re-sent) unchanged until the backend accepts it. While building it:

* main series: within the batch only the last value of a (key, step) is sent (the reducer
  re-emits steps a restarted incarnation re-logged; ``replaced``); a value for a step sent in
  an earlier batch is sent again, and each backend treats that repeated step in its own way
  (documented in its module);
* per-rank series are named by ``rank_key``; one whose name is also a metric key is not sent
  (``collisions``), and a rank's points a later incarnation replaced are skipped (``stale``,
  the rule of :mod:`coordinator.core.incarnations`); a step a rank logged twice is sent once,
  with its later value (``replaced``, :func:`~coordinator.core.incarnations.latest_points`);
* each series is thinned when the backend is downsampled (``thinned``, :mod:`.thinning`);
* with ``with_fields``, the fields that changed since last sent ride along (:mod:`.fields`);
* the text-series entries after the text cursor ride along too (:mod:`.texts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.incarnations import latest_points, replaced_from, without_replaced
from coordinator.core.values import FieldValue
from coordinator.forward.backend import Point, Series, TextSeries
from coordinator.forward.fields import changed_fields
from coordinator.forward.settings import ForwarderSettings
from coordinator.forward.texts import build_texts
from coordinator.forward.thinning import thin
from coordinator.journal.reader import JournalReader
from coordinator.journal.records import MAIN_RANK, StoredChunk

__all__ = ["Batch", "BatchBuilder"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    """One batch built from the journal, sent (and re-sent) unchanged until accepted."""

    series: list[Series]
    params: dict[str, Any]
    tags: dict[str, str]
    cursor: int
    """The journal position the cursor moves to once the batch is accepted."""
    chunks: int
    points: int
    thinned: int
    stale: int
    replaced: int
    collisions: int
    thin_state: dict[str, list[float]]
    fields_sent: dict[str, str]
    dropped: int = 0
    """Points the backend said it cannot store (set by the accepted send)."""
    texts: list[TextSeries] = field(default_factory=list)
    text_cursor: int = 0
    """The text id the text cursor moves to once the batch is accepted."""
    text_entries: int = 0
    """Text entries read from the journal for this batch."""
    texts_replaced: int = 0
    texts_stale: int = 0
    """Text entries a later incarnation of their rank replaced (read, not sent)."""
    run_tags: list[str] | None = None
    """The run's tags (sorted) when they changed."""
    files: dict[str, FieldValue] = field(default_factory=dict)
    """Changed artifact fields."""
    sent: dict[str, int] = field(default_factory=dict)
    """What the accepted send counted (texts sent and dropped, files sent and missing, ...)."""

    def empty(self) -> bool:
        """True when there is nothing to send and neither cursor would move."""
        fields_ = self.params or self.tags or self.files or self.run_tags is not None
        return not (self.series or fields_) and self.chunks == 0 and self.text_entries == 0

    def moved(self) -> bool:
        """True when the batch moves a cursor (the journal had something new)."""
        return self.chunks > 0 or self.text_entries > 0

    def counts(self) -> dict[str, int]:
        """The forwarder's counters this batch adds once the backend accepted it."""
        return {
            "forwarded_points": sum(len(x.points) for x in self.series),
            "forwarded_batches": 1 if self.chunks else 0,
            "thinned_points": self.thinned,
            "stale_points": self.stale,
            "replaced_points": self.replaced,
            "name_collisions": self.collisions,
            "dropped_points": self.dropped,
            "params_sent": len(self.params),
            "tags_sent": len(self.tags),
            "replaced_texts": self.texts_replaced,
            "stale_texts": self.texts_stale,
            **self.sent,
        }


class BatchBuilder:
    """Turns the journal after a cursor into :class:`Batch` es for one backend (one thread)."""

    def __init__(self, backend_name: str, settings: ForwarderSettings) -> None:
        """Build batches for ``backend_name`` as ``settings`` say."""
        self.backend_name = backend_name
        self.settings = settings
        self._main_keys: set[str] = set()
        self._warned: set[str] = set()

    def build(
        self,
        store: JournalReader,
        cursor: int,
        thin_state: dict[str, list[float]],
        fields_sent: dict[str, str],
        *,
        with_fields: bool,
        texts: int = 0,
        texts_bound: int = 0,
    ) -> Batch:
        """The next batch after ``cursor`` and ``texts`` (not past ``texts_bound`` when above it).

        ``thin_state``/``fields_sent`` are the cursor's (not modified).
        """
        chunks = store.chunks_after(cursor, self.settings.batch_points)
        params: dict[str, Any] = {}
        tags: dict[str, str] = {}
        b = Batch([], params, tags, cursor, len(chunks), 0, 0, 0, 0, 0, thin_state, fields_sent, text_cursor=texts)
        if with_fields:
            changes = changed_fields(store.fields(), fields_sent, sys_ranks=self.settings.sys_ranks)
            b.params, b.tags, b.fields_sent = changes.params, changes.tags, changes.sent
            b.run_tags, b.files = changes.run_tags, changes.files or {}
        if any(c.rank == MAIN_RANK for c in chunks) or not self._main_keys:
            self._main_keys = set(store.key_policies())
        # Text series are sent whatever per_rank says: they are per rank, there is no reduced one.
        tb = build_texts(store, texts, texts_bound, self.settings.rank_key, collide=self._main_keys)
        b.texts, b.text_cursor, b.text_entries, b.texts_replaced = tb.series, tb.cursor, tb.entries, tb.replaced
        b.texts_stale, b.collisions = tb.stale, tb.collisions
        for name in sorted(tb.collided - self._warned):
            self._warned.add(name)
            _log.warning(
                "%s: a text series would be named %r, which is also a metric key; its texts are not sent "
                "(choose another rank_key)",
                self.backend_name,
                name,
            )
        if not chunks:
            return b
        b.cursor = chunks[-1].id
        b.thin_state = {k: list(v) for k, v in thin_state.items()}
        b.series = self._series(chunks, store, b)
        b.points = sum(len(c.steps) for c in chunks)
        return b

    def _series(self, chunks: list[StoredChunk], store: JournalReader, b: Batch) -> list[Series]:
        # Main series: within the batch only the last value of a (key, step) is sent.
        last_main: dict[tuple[str, int], tuple[int, int]] = {}
        for ci, c in enumerate(chunks):
            if c.rank == MAIN_RANK:
                for i, s in enumerate(c.steps):
                    last_main[(c.key, s)] = (ci, i)
        multi = store.multi_incarnation_ranks() if any(c.rank >= 0 for c in chunks) else set()
        cuts: dict[tuple[str, int, int], int | None] = {}
        out: dict[str, tuple[str, int | None, list[Point]]] = {}
        for ci, c in enumerate(chunks):
            if c.rank == MAIN_RANK:
                name, rank = c.key, None
                pts = self._main_points(ci, c, last_main, b)
            else:
                if not self.settings.per_rank:
                    continue
                name, rank = self.settings.rank_key.format(key=c.key, rank=c.rank), c.rank
                if name in self._main_keys:
                    self._collision(name, c, b)
                    continue
                cut = self._cut(c, store, cuts) if rank in multi else None
                pts = [(s, v, c.ts) for s, v in zip(c.steps, c.values, strict=True)]
                if cut is not None:
                    kept = without_replaced(pts, cut)
                    b.stale += len(pts) - len(kept)
                    pts = kept
            rate = self.settings.max_points_per_key_per_s
            if rate is not None and pts:
                kept, b.thin_state[name] = thin(pts, c.ts, rate, b.thin_state.get(name))
                b.thinned += len(pts) - len(kept)
                pts = kept
            if not pts:
                continue
            entry = out.get(name)
            if entry is None:
                out[name] = (c.key, rank, pts)
            else:
                entry[2].extend(pts)
        series = []
        for name, (key, rank, pts) in out.items():
            if rank is not None:  # a step a rank logged twice: its later value replaces (the main series' rule)
                kept = latest_points(pts)
                b.replaced += len(pts) - len(kept)
                pts = kept
            series.append(Series(name, key, rank, pts))
        return series

    @staticmethod
    def _main_points(
        ci: int, c: StoredChunk, last_main: dict[tuple[str, int], tuple[int, int]], b: Batch
    ) -> list[Point]:
        pts: list[Point] = []
        for i, (s, v) in enumerate(zip(c.steps, c.values, strict=True)):
            if last_main[(c.key, s)] != (ci, i):
                b.replaced += 1
                continue
            pts.append((s, v, c.ts))
        return pts

    @staticmethod
    def _cut(c: StoredChunk, store: JournalReader, cuts: dict[tuple[str, int, int], int | None]) -> int | None:
        """The step from which this chunk's incarnation was replaced (cached per key, rank, incarnation)."""
        ck = (c.key, c.rank, c.incarnation)
        if ck not in cuts:
            lineage = [(inc, first) for inc, _, first in store.rank_incarnations(c.key, c.rank)]
            cuts[ck] = replaced_from(c.incarnation, lineage)
        return cuts[ck]

    def _collision(self, name: str, c: StoredChunk, b: Batch) -> None:
        b.collisions += len(c.steps)
        if name not in self._warned:
            self._warned.add(name)
            _log.warning(
                "%s: rank %d's series of %r would be named %r, which is also a metric key; its points "
                "are not sent (choose another rank_key)",
                self.backend_name,
                c.rank,
                c.key,
                name,
            )
