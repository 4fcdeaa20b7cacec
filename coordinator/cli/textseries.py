"""Reading a stored run's text series for ``export``: in step order, each text with the time it was stored.

The texts are the journal's own pages (:meth:`~coordinator.journal.reader.JournalReader.text_page`:
the replacement rule applied, a step logged twice holds its later text), the same texts
``fetch_values`` returns. A text's time is the ``ts`` of the row that holds it (its rank's batch
time), read for each page's step range and resolved by the same rule
(:func:`coordinator.core.incarnations.replaced_from`, the latest row of a step wins). Read
on the run's read-only connection, one page at a time (bounded memory), retried while SQLite is busy.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator

from coordinator.cli.series import ReadOnlyRun, retry_busy
from coordinator.core.incarnations import replaced_from

__all__ = ["TextSeries", "TimedTexts"]

TimedTexts = tuple[list[int], list[str], list[float]]
"""Steps, texts and times (unix seconds) of consecutive texts of one rank's series."""

_TIMES = (
    "SELECT step, incarnation, ts FROM texts WHERE key_id=(SELECT id FROM keys WHERE key=?) AND rank=? "
    "AND step BETWEEN ? AND ? ORDER BY id"
)


class TextSeries:
    """A read-only view of one run's text series, on the connection of the run's :class:`ReadOnlyRun`.

    Args:
        run: the open run (it owns the connection and closes it).
    """

    def __init__(self, run: ReadOnlyRun) -> None:
        self._db = run.db
        self.reader = run.reader

    def keys(self, patterns: list[str] | None = None) -> list[str]:
        """The run's text keys, sorted; with ``patterns`` those matching any of the globs."""
        keys = retry_busy(self.reader.text_keys)
        return keys if not patterns else [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]

    def ranks_of(self, key: str) -> list[int]:
        """The ranks that logged texts of ``key``, sorted."""
        sql = "SELECT DISTINCT rank FROM texts WHERE key_id=(SELECT id FROM keys WHERE key=?) ORDER BY rank"
        return [int(r) for (r,) in retry_busy(lambda: self._db.execute(sql, (key,)).fetchall())]

    def count(self, key: str, rank: int) -> int:
        """Current texts of (``key``, ``rank``): one per step (from the journal's summary of the text series)."""
        rows = retry_busy(self.reader.text_summary)
        return sum(int(r["n"]) for r in rows if r["key"] == key and r["rank"] == rank)

    def timed_pages(self, key: str, rank: int) -> Iterator[TimedTexts]:
        """The texts of (``key``, ``rank``) in step order with their times, a journal page at a time."""
        lineage = retry_busy(lambda: self.reader.text_lineage(key, rank))
        cuts = {inc: replaced_from(inc, lineage) for inc, _ in lineage}
        after: int | None = -(2**63)
        while after is not None:
            page = retry_busy(functools.partial(self.reader.text_page, key, rank, after))
            if not page.steps:
                return
            yield page.steps, page.texts, self._times(key, rank, page.steps, cuts)
            after = page.next

    def _times(self, key: str, rank: int, steps: list[int], cuts: dict[int, int | None]) -> list[float]:
        """Per step, the time of the latest row no later incarnation replaced (what the page's text is)."""
        when: dict[int, float] = {}
        rows = retry_busy(lambda: self._db.execute(_TIMES, (key, rank, steps[0], steps[-1])).fetchall())
        for step, inc, ts in rows:
            cut = cuts.get(int(inc))
            if cut is None or step < cut:
                when[int(step)] = float(ts)
        return [when[s] for s in steps]
