"""A rank's local view of its run: fields, last values of series, rank states, as ``fetch()`` reads them.

The view holds this rank's own field writes at once (read-your-writes) and everything the
aggregator had committed at the last ``sync()``; it never asks the aggregator by itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from coordinator.journal.store import LocalStore

__all__ = ["LocalView", "field_from_wire"]


def field_from_wire(tag: str, val: Any) -> Any:
    """A field's value as the user sees it, from its wire form ``(tag, value)``.

    Artifacts become a record dict, datetimes an aware ``datetime``; other values are as sent.
    """
    if tag == "artifact":
        name, size, sha, copied, where = val
        return {"name": name, "size": size, "sha256": sha, "copied": copied, "path": where}
    if tag == "datetime":
        return dt.datetime.fromtimestamp(val).astimezone()
    return val


class LocalView:
    """What ``fetch()``, ``fetch_last()`` and ``rank_states()`` answer from, without a round trip.

    Not locked by itself: the run updates it under its buffer lock.
    """

    __slots__ = ("fields", "last", "rank", "ranks", "texts_last")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.fields: dict[str, Any] = {}
        """Field path -> value (decoded with :func:`field_from_wire`)."""
        self.last: dict[str, tuple[int, float]] = {}
        """Series key -> (step, value) of its last reduced point."""
        self.ranks: dict[str, str] = {}
        """Rank (as a string, as on the wire) -> live, closed or lost."""
        self.texts_last: dict[str, str] = {}
        """Text series key -> the last text this rank appended (a read-only run: the lowest rank's)."""

    def apply_state(self, rep: Mapping[str, Any]) -> None:
        """Take in the aggregator's answer to a STATE request (fields, last values, rank states)."""
        for path, (tag, val) in rep.get("fields", {}).items():
            self.fields[path] = field_from_wire(tag, val)
        for k, (s, v) in rep.get("last", {}).items():
            self.last[k] = (s, v)
        self.ranks = dict(rep.get("ranks", {}))

    def load(self, store: LocalStore) -> None:
        """Take in a stored run's fields and the last point of each main series (read-only runs)."""
        for p, (tag, val) in store.fields().items():
            self.fields[p] = field_from_wire(tag, val)
        for s in store.series_summary():
            if s["last"] is not None:
                step, value = s["last"]
                self.last[s["key"]] = (step, value)
        for t in store.text_summary():  # sorted by key, then rank: the lowest rank's is kept
            if t["last_text"] is not None:
                self.texts_last.setdefault(t["key"], t["last_text"])

    def fetch(self, path: str) -> Any:
        """A field, the last value of a series, or the fields under ``path`` as a nested dict.

        Raises:
            KeyError: nothing known under this path.
        """
        if path in self.fields:
            return self.fields[path]
        if path in self.last:
            return self.last[path][1]
        prefix = path + "/"
        sub = {p[len(prefix) :]: v for p, v in self.fields.items() if p.startswith(prefix)}
        if sub:
            nested: dict[str, Any] = {}
            for p, v in sub.items():
                d = nested
                *parents, leaf = p.split("/")
                for part in parents:
                    d = d.setdefault(part, {})
                d[leaf] = v
            return nested
        raise KeyError(f"nothing under {path!r} in rank {self.rank}'s view; call run.sync() to see other ranks' writes")

    def fetch_last(self, path: str) -> float | str:
        """The last value of the reduced series ``path``, or the last text of the text series ``path``.

        Raises:
            KeyError: no such series in the view.
        """
        v = self.last.get(path)
        if v is None:
            text = self.texts_last.get(path)
            if text is not None:
                return text
            raise KeyError(f"no series {path!r} in this rank's view; call run.sync() first")
        return v[1]

    def rank_states(self) -> dict[int, str]:
        """Each rank's state (live, closed, lost) as of the last state answer."""
        return {int(r): s for r, s in self.ranks.items()}
