"""The journal's reads of text series, as a part of :class:`~coordinator.journal.reader.JournalReader`.

Kept apart from the numeric reads (the SQL is :mod:`coordinator.journal.texts`'); a store older
than schema 3 opened read-only has no ``texts`` table, and reads as having no text series.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from coordinator.journal.texts import (
    MAX_TEXT_PAGE,
    TEXT_POLICY,
    StoredText,
    TextPage,
    last_steps,
    max_text_id,
    text_lineage,
    text_page,
    text_summary,
    texts_after,
)

__all__ = ["TextReads"]


class TextReads:
    """Text-series queries over the reader's connection (``_db``); ``has_texts`` says whether the table exists."""

    _db: sqlite3.Connection
    has_texts: bool

    def text_keys(self) -> list[str]:
        """The keys of text series, sorted."""
        sql = "SELECT key FROM keys WHERE policy = ? ORDER BY key"
        return [k for (k,) in self._db.execute(sql, (TEXT_POLICY,))]

    def is_text(self, key: str) -> bool:
        """True when ``key`` is a text series."""
        return self._text_key_id(key) is not None

    def texts(self, key: str, rank: int) -> list[tuple[int, str]]:
        """One rank's text series as (step, text) pairs in step order, the replacement rule applied."""
        out: list[tuple[int, str]] = []
        after: int | None = -1
        while after is not None:
            page = self.text_page(key, rank, after, MAX_TEXT_PAGE)
            out.extend(zip(page.steps, page.texts, strict=True))
            after = page.next
        return out

    def text_page(self, key: str, rank: int, after: int = -1, limit: int = MAX_TEXT_PAGE) -> TextPage:
        """At most ``limit`` texts of one rank's series with step ``> after``, in step order (bounded in bytes).

        Raises:
            TypeError: a wrong argument type. ValueError: ``limit`` < 1.
        """
        if type(key) is not str or type(rank) is not int or type(after) is not int or type(limit) is not int:
            raise TypeError("text_page(key: str, rank: int, after: int, limit: int)")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        key_id = self._text_key_id(key)
        if key_id is None:
            return TextPage([], [], None)
        return text_page(self._db, key_id, rank, after, limit)

    def text_lineage(self, key: str, rank: int) -> list[tuple[int, int]]:
        """(incarnation, first step) of one rank's text series ``key``, in start order (empty: no such series).

        What a forwarder reads (as :func:`coordinator.core.incarnations.replaced_from`'s lineage) to
        skip the texts of :meth:`texts_after` that a restarted rank replaced.

        Raises:
            TypeError: a wrong argument type.
        """
        if type(key) is not str or type(rank) is not int:
            raise TypeError("text_lineage(key: str, rank: int)")
        key_id = self._text_key_id(key)
        return [] if key_id is None else text_lineage(self._db, key_id, rank)

    def texts_after(self, cursor: int, limit: int) -> list[StoredText]:
        """At most ``limit`` committed texts with ``id > cursor``, in journal order (unresolved: every row)."""
        return texts_after(self._db, cursor, limit) if self.has_texts else []

    def max_text_id(self) -> int:
        """The id of the last committed text (0 when none): the text part of the journal position."""
        return max_text_id(self._db) if self.has_texts else 0

    def text_summary(self) -> list[dict[str, Any]]:
        """Per (key, rank) of each text series: ``key``, ``rank``, ``n``, ``last_step``, ``last_text``."""
        return text_summary(self._db) if self.has_texts else []

    def text_last_steps(self, rank: int) -> dict[str, int]:
        """Key -> the last current step of ``rank``'s text series (for WELCOME's ``last_steps``)."""
        return last_steps(self._db, rank) if self.has_texts else {}

    def _text_key_id(self, key: str) -> int | None:
        if not self.has_texts:
            return None
        row = self._db.execute("SELECT id FROM keys WHERE key=? AND policy=?", (key, TEXT_POLICY)).fetchone()
        return None if row is None else int(row[0])
