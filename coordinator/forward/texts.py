"""Text series on their way to a tracker: the entries after the text cursor, grouped per rank's series.

Text series are per rank (no reduction across ranks), so each becomes one backend series named
by ``rank_key`` (``ranks/<r>/<key>``). The rule of :mod:`coordinator.core.incarnations` applies
as for numeric per-rank series: a rank's texts that a later incarnation replaced (an elastic
restart that logs the key again from an earlier step) are not sent (``stale``; the lineage is read
only for ranks that restarted), and within a batch a step a rank logged twice is sent once, with
its later text (``replaced``). Texts of an incarnation sent before its replacement was
committed stay in the tracker (as numeric points do). A batch holds at most
:data:`TEXTS_PER_BATCH` entries (a text is up to 64 KiB), and never goes past ``bound`` when one
is given: a resumed forwarder re-sends exactly the batch that was in flight (see
:class:`~coordinator.forward.cursor.CursorState` ``texts_pending``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.core.incarnations import latest_points, replaced_from
from coordinator.forward.backend import TextPoint, TextSeries
from coordinator.journal.reader import JournalReader
from coordinator.journal.texts import StoredText

__all__ = ["TEXTS_PER_BATCH", "TextBatch", "build_texts"]

TEXTS_PER_BATCH = 500
"""Most text-series entries read from the journal per batch (at 64 KiB each, at most ~32 MB)."""


@dataclass(slots=True)
class TextBatch:
    """The text part of one forwarded batch."""

    series: list[TextSeries] = field(default_factory=list)
    cursor: int = 0
    """The text id the text cursor moves to once the batch is accepted."""
    entries: int = 0
    """Entries read from the journal (sent, replaced, stale or skipped)."""
    replaced: int = 0
    stale: int = 0
    """Entries a later incarnation of their rank replaced (not sent)."""
    collisions: int = 0
    """Entries not sent because their series' name is also a metric key's (``name_collisions``)."""
    collided: set[str] = field(default_factory=set)
    """Those series' names (the caller warns once per name)."""


def build_texts(store: JournalReader, cursor: int, bound: int, rank_key: str, *, collide: set[str]) -> TextBatch:
    """The text entries after ``cursor`` (up to ``bound`` when ``bound > cursor``) as backend series.

    Args:
        store: the run's journal.
        cursor: the text cursor (last text id sent).
        bound: the last text id of the batch in flight when the forwarder stopped, or 0.
        rank_key: the ``str.format`` template naming a rank's series.
        collide: names taken by numeric series (a text series named like one is not sent: the
            tracker would refuse or mix the two); counted as ``collisions``.
    """
    rows: Sequence[StoredText] = store.texts_after(cursor, TEXTS_PER_BATCH)
    if bound > cursor:
        rows = [t for t in rows if t.id <= bound]
    out = TextBatch(cursor=rows[-1].id if rows else cursor, entries=len(rows))
    multi = store.multi_incarnation_ranks() if rows else set()
    cuts: dict[tuple[str, int, int], int | None] = {}
    grouped: dict[tuple[str, int], list[TextPoint]] = {}
    for t in rows:
        name = rank_key.format(key=t.key, rank=t.rank)
        if name in collide:
            out.collisions += 1
            out.collided.add(name)
            continue
        if t.rank in multi:
            ck = (t.key, t.rank, t.incarnation)
            if ck not in cuts:
                cuts[ck] = replaced_from(t.incarnation, store.text_lineage(t.key, t.rank))
            cut = cuts[ck]
            if cut is not None and t.step >= cut:
                out.stale += 1
                continue
        grouped.setdefault((t.key, t.rank), []).append((t.step, t.text, t.ts))
    for (key, rank), pts in grouped.items():
        kept = latest_points(pts)
        out.replaced += len(pts) - len(kept)
        out.series.append(TextSeries(rank_key.format(key=key, rank=rank), key, rank, kept))
    return out
