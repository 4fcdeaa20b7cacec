"""A rank's text series: appending texts (``run["samples/generation"].append("...", step=s)``).

A key is numeric or text for the whole run: this rank refuses a str for a numeric key and a
number for a text key (``TypeError``), the aggregator refuses (and counts) another rank that mixes
them. A text is checked at the call site (str, at most 64 KiB of UTF-8), redacted like a str field
(outside the buffer lock: a user callable), then appended to the buffer's text columns, where it
counts as one point; the sender cuts and numbers it like a metric point.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable

from coordinator.client.hotpath import wait_for_room
from coordinator.client.keys import KeyRegistry
from coordinator.client.redaction import Redactor
from coordinator.client.view import LocalView
from coordinator.core.limits import MAX_KEYS_PER_RUN
from coordinator.core.values import check_step, check_text
from coordinator.errors import ClosedError
from coordinator.transport.buffer import Buffer
from coordinator.transport.sender import SenderThread

__all__ = ["TextAppender"]


class TextAppender:
    """Appends texts to one rank's buffer; knows which keys this rank made text series.

    Args:
        run_id, rank, endpoint: for messages.
        buf, keys, view: the run's buffer, key registry and local view.
        redact: the run's redactor (``None``: nothing is redacted).
    """

    def __init__(
        self,
        run_id: str,
        rank: int,
        endpoint: str | None,
        buf: Buffer,
        keys: KeyRegistry,
        view: LocalView,
        redact: Redactor | None,
    ) -> None:
        self._run_id = run_id
        self._rank = rank
        self._endpoint = endpoint
        self._buf = buf
        self._keys = keys
        self._view = view
        self._redact = redact
        self.sender: SenderThread | None = None
        """The run's sender thread (makes room in a full buffer); set once it started."""
        self.refusal: Callable[[], str | None] = lambda: None
        """Under the buffer lock: ``None`` while the run takes calls, else why not (set by the run)."""
        self.keys: set[str] = set()
        """Keys this rank appended texts to."""

    def append(self, key: str, text: object, step: int | None, block: bool = True) -> bool:
        """Append one text (see ``Handle.append``).

        Returns:
            False when nothing was kept without an error: ``block`` is False and the buffer is
            full, or the redaction dropped the text (counted by the redactor).

        Raises:
            TypeError: not a str, or ``key`` is a numeric series. ValueError: over 64 KiB, a bad
            key or step. ClosedError: the run was stopped.
        """
        step = -1 if step is None else check_step(step)  # not a hot path: every bound checked
        text = check_text(key, text)
        if self._redact is not None:
            kept = self._redact.apply([(key, ("str", text))])
            if not kept:
                return False
            tag, val = kept[0][1]
            text = check_text(key, val if tag == "str" else str(val))
        b = self._buf
        with b.lock:
            why = self.refusal()
            if why is not None:
                raise ClosedError(f"run {self._run_id} {why}; append() did nothing")
            if b.pending >= b.max_points:
                if not block:
                    return False
                wait_for_room(b, self.sender, self._rank, self._endpoint)
            col = b.texts.get(key)
            if col is None:
                if key not in self.keys:
                    self._admit(key)
                col = b.texts[key] = (array("q"), [])
            try:
                col[0].append(step)
                col[1].append(text)
            except BaseException:  # a signal's exception (Ctrl-C) between the two: keep them paired
                if len(col[0]) > len(col[1]):
                    col[0].pop()
                raise
            b.pending += 1
            b.stir()
            self._view.texts_last[key] = text
        return True

    def check_numeric(self, key: str) -> None:
        """Raise ``TypeError`` when ``key``, about to become a numeric series, is a text series of this rank."""
        if key in self.keys:
            raise TypeError(f"{key!r} is a text series; a key is numeric or text for the whole run")

    def check_fields(self, items: Iterable[tuple[str, object]]) -> None:
        """Raise ``ValueError`` when a field path is one of this rank's text series (buffer lock held)."""
        for p, _ in items:
            if p in self.keys:
                raise ValueError(f"{p!r} is a text series; a path is either a field or a series")

    def _admit(self, key: str) -> None:
        """Make ``key`` a text series of this rank (buffer lock held), or raise."""
        if key in self._keys.series:
            raise TypeError(f"{key!r} is a numeric series; a key is numeric or text for the whole run")
        self._keys.check_new(key)
        if len(self.keys) + len(self._keys.series) >= MAX_KEYS_PER_RUN:
            raise ValueError(f"more than {MAX_KEYS_PER_RUN} distinct series in run {self._run_id}")
        self.keys.add(key)
