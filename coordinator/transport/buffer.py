"""The per-run buffer shared by the training thread(s) and the sender thread.

Metric points accumulate as columns (an int64 step array and a float64 value array per key)
under one short lock; the sender swaps the whole column dict out every flush interval, so the
hot path never encodes and the sender's work is per key, not per point. A dict of numbers
(at one step or without one) accumulates as one *frame* (:mod:`~coordinator.transport.frames`) for
all its keys instead: within a generation a key lives in exactly one place, a column or one
frame (:attr:`Buffer.framed`), and a per-key append of a framed key spills its frame first. A frame
outlives its generation: the cut takes its rows and leaves it empty for the next calls of the same
keys, until a generation passes without one. Texts of text series
accumulate the same way (steps and a list of str per key) and count as points. A *generation* is
what accumulated between two swaps; ``wait()`` waits for its generation to be acknowledged.

Flush by volume: once a generation holds a full batch (``max_batch_points``), the next call on
the hot path wakes the sender (:meth:`Buffer.past_mark`), once per generation, so a busy rank
sends full batches instead of ever larger ones at the flush interval. The hot path pays one
compare per call for it, the same compare that checks for room (``pending >= mark``).
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from typing import Any

from coordinator.core.columns import Column
from coordinator.core.values import FieldValue
from coordinator.errors import CoordinatorError
from coordinator.transport.frames import Frame

__all__ = ["NEVER", "Buffer", "Column", "Cut", "Frame", "TextColumn"]

NEVER = 1 << 62
""":attr:`Buffer.copy_mark` without copies: never reached."""

TextColumn = tuple["array[int]", list[str]]
"""One text series' pending points: its steps (-1: numbered by the sender) and its texts."""

Cut = tuple[int, dict[str, Column], dict[tuple[str, ...], Frame], list[tuple[str, FieldValue]], dict[str, TextColumn]]
"""A swapped-out generation: its number, metric columns, frames, field writes and text columns."""


class Buffer:
    """State shared between the API (training thread) and the sender thread.

    All attributes are guarded by ``lock``; ``cond`` (on the same lock) is notified whenever
    acknowledged progress, room, or errors change.
    """

    def __init__(self, max_points: int) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.cols: dict[str, Column] = {}
        self.frames: dict[tuple[str, ...], Frame] = {}
        """Key tuple -> the frame of this generation's dicts of plain numbers logged with those keys."""
        self.framed: dict[str, Frame] = {}
        """Key -> the frame holding its points of this generation (such a key has no column; a frame
        kept from the last generation may hold none yet)."""
        self.fields: list[tuple[str, FieldValue]] = []
        self.texts: dict[str, TextColumn] = {}
        """Text series key -> its pending points (counted in ``pending`` like metric points)."""
        self.gen = 0
        """Generation accumulating now."""
        self.acked_gen = -1
        """Every generation up to this one is durable."""
        self.pending = 0
        """Points in the buffer (not yet taken by the sender); bounded by ``max_points``."""
        self.cut_counted = 0
        """``pending`` at the last :meth:`cut`: what the hot path counted into that generation."""
        self.in_flight = 0
        """Points taken by the sender and not yet acknowledged (window, backlog, spool)."""
        self.dropped_points = 0
        self.journal = 0
        """Highest journal position (chunk id) the aggregator reported with a reply that acknowledges."""
        self.journal_texts = 0
        """Highest text id (``texts.id``) the aggregator reported with such a reply (``"jt"``)."""
        self.max_points = max_points
        self.mark = max_points
        """The hot path calls :meth:`past_mark` once ``pending`` reaches it: the wake point of
        this generation (``max_batch_points``), then, once the sender is woken, ``max_points``;
        or, with copies, the next copy check (:attr:`copy_mark`) if that comes first."""
        self._next = max_points
        """:attr:`mark` without copies (0: the sender dozes)."""
        self.copy_mark = NEVER
        """``pending`` at which the hot path next asks :attr:`copy_check` whether a copy is due
        (:mod:`~coordinator.transport.copies`; set by it, lock held)."""
        self.copy_check: Callable[[], None] | None = None
        """Copies the uncut points if a kill window has passed, or sets the next :attr:`copy_mark`."""
        self.slow_write: Callable[[], None] | None = None
        """Told of a slow-path write (a field, a text): with copies, it starts their timer."""
        self._wake_points = max_points
        self._wake: Callable[[], None] | None = None
        self.flush_requested = False
        self.errors: list[CoordinatorError] = []
        """Errors not yet raised to the user (raised by the next wait/close)."""
        self.fatal: CoordinatorError | None = None
        """An error after which nothing more can be delivered."""
        self.acked = 0
        self.lost = 0
        self.awaiting = 0
        """Threads blocked until an ack arrives (``wait()``): while > 0 the sender reads each reply
        as it arrives; otherwise it reads them at its next flush (one wake-up per flush, not two)."""

    def wake_at(self, points: int, wake: Callable[[], None]) -> None:
        """Have the hot path call ``wake`` (the sender's) when a generation reaches ``points``."""
        with self.lock:
            self._wake, self._wake_points = wake, max(1, points)
            self._set_mark(self._batch_mark())

    def _set_mark(self, points: int) -> None:
        """The wake (or room) point of this generation is ``points`` (lock held); the hot path's mark follows."""
        self._next = points
        self.mark = min(points, self.copy_mark)

    def copies_at(self, points: int) -> None:
        """The next copy check is when ``pending`` reaches ``points`` (lock held; :mod:`.copies`)."""
        self.copy_mark = points
        self.mark = min(self._next, points)

    def _batch_mark(self) -> int:
        """A generation's first wake point: a full batch (``max_batch_points``), the buffer's room at most."""
        return min(self._wake_points, self.max_points)

    def past_mark(self) -> bool:
        """``pending`` reached :attr:`mark` (lock held): a copy check, or wake the sender once; True when full.

        The wake is a pipe write made with the lock held, once per generation at most: the
        sender's flush takes the lock after it anyway. The first write to a dozing sender
        (:meth:`doze`) wakes it without asking for a flush: its flush interval starts then, and
        a full batch still wakes it again.
        """
        if self.pending >= self.copy_mark and self.copy_check is not None:
            self.copy_check()
            if self.pending < self._next:
                self.mark = min(self._next, self.copy_mark)
                return False
        if self.dozing:
            self._set_mark(self._batch_mark())
            if self._wake is not None:
                self._wake()
            return self.pending >= self.max_points
        self.request_cut()
        self._set_mark(self.max_points)
        return self.pending >= self.max_points

    def request_cut(self) -> None:
        """Have the sender cut now (lock held): a full batch, or points a copy cannot take. One wake a generation."""
        if not self.flush_requested and self._wake is not None:
            self.flush_requested = True
            self._wake()

    def doze(self) -> bool:
        """Sender thread, idle (:mod:`~coordinator.transport.cadence`): have the next write wake it (False: one came).

        The hot path's compare (``pending >= mark``) then calls :meth:`past_mark` on the first
        ``log()``/``append()``, which wakes the sender (its flush interval starts then); a
        slow-path write (fields, texts) calls :meth:`stir`. An idle sender waits for that, or for
        its heartbeat, instead of waking every flush interval to find nothing.
        """
        with self.lock:
            if self.pending or self.fields or self.flush_requested:
                return False
            self._set_mark(0)
            return True

    @property
    def dozing(self) -> bool:
        """The sender waits for the next write (:meth:`doze`) and nothing has woken it yet."""
        return self._next == 0

    @property
    def has_writes(self) -> bool:
        """Points, texts or fields wait in this generation (read without the lock: a hint)."""
        return bool(self.pending or self.fields)

    def add_fields(self, items: list[tuple[str, FieldValue]]) -> None:
        """Queue field writes (lock held) and wake a dozing sender for them."""
        self.fields.extend(items)
        self.stir()

    def stir(self) -> None:
        """A slow path added to this generation (lock held): wake the sender if it dozes; with copies, say so."""
        if self.slow_write is not None:
            self.slow_write()
        if self.dozing:
            self.past_mark()

    def spill(self, key: str, moved: Callable[[Frame, dict[str, Column]], None] | None = None) -> None:
        """Turn the frame holding ``key`` into per-key columns, points in order (lock held).

        A per-key append of a framed key calls this first, so its earlier points stay first.
        ``moved(frame, cols)`` is told once the frame's points are in ``cols`` (the run's deferred
        tensor reads follow them), also when a signal's exception (Ctrl-C) lands after that; it
        must do all or nothing, and nothing the second time.
        """
        fr = self.framed[key]
        framed, cols = self.framed, self.cols
        try:
            cols.update(fr.columns())
            del self.frames[fr.keys]
            for k in fr.keys:
                del framed[k]
            if moved is not None:
                moved(fr, cols)
        except BaseException:  # a signal's exception (Ctrl-C) midway: every point stays in one place
            if fr.keys in self.frames:  # still the frame's (its keys had no column before: open_frame)
                for k in fr.keys:
                    cols.pop(k, None)
            else:
                for k in fr.keys:
                    framed.pop(k, None)
                if moved is not None:
                    moved(fr, cols)
            raise

    def cut(self, fresh: dict[str, Column]) -> Cut:
        """Swap out the current generation (sender thread); frees its room in the buffer.

        Args:
            fresh: empty columns for the keys expected next, allocated by the caller outside the
                lock, so the training thread does not build them again after every flush.

        Returns:
            The generation, its metric columns, its frames, its field writes and its text columns:
            containers the buffer no longer holds, so nothing the training thread logs after the
            swap can reach them.
        """
        with self.lock:
            gen = self.gen
            # Never hand over a live dict, even an empty one: the caller encodes the cut after
            # the lock is released (pausing between slices), while the training thread opens
            # frames and text series of the next generation in the buffer's dicts.
            frames = self._take_rows(fresh) if self.frames else {}
            cols, self.cols = self.cols, fresh
            texts = self.texts
            fields, self.fields = self.fields, []
            if texts:
                self.texts = {}
            else:
                texts = {}
            self.gen = gen + 1
            self.flush_requested = False
            if self.copy_mark != NEVER:  # counted from this generation's first point on
                self.copy_mark = max(0, self.copy_mark - self.pending)
            self._set_mark(self._batch_mark())
            self.cut_counted = self.pending
            self.in_flight += self.pending
            self.pending = 0
            self.cond.notify_all()
        return gen, cols, frames, fields, texts

    def _take_rows(self, fresh: dict[str, Column]) -> dict[tuple[str, ...], Frame]:
        """The frames' rows of the generation being cut (lock held), as frames of their own.

        A frame that had rows stays, empty, for the next generation (:meth:`Frame.take`); one that
        had none in a whole generation goes, and its keys are free for columns or another frame
        again. A key stays in one place: ``fresh`` loses the column built ahead for a key that
        the next generation has a frame for (it was per key in an earlier generation).
        """
        rows: dict[tuple[str, ...], Frame] = {}
        framed = self.framed
        for kt, fr in list(self.frames.items()):
            if fr.steps:
                rows[kt] = fr.take()
            else:
                del self.frames[kt]
                for k in kt:
                    if framed.get(k) is fr:
                        del framed[k]
        if fresh and framed:
            for k in [k for k in fresh if k in framed]:
                del fresh[k]
        return rows

    def recount(self, cut_points: int) -> None:
        """The last cut generation held ``cut_points`` points: correct ``in_flight`` if the hot path counted fewer.

        A signal's exception (Ctrl-C's ``KeyboardInterrupt``) can land after a call's appends and
        before its count; counted short, the generation's acknowledgements would take
        ``in_flight`` below zero, and the rank's ``accepted`` and ``undelivered`` counters with it.
        Sender thread, after :meth:`cut`; takes the lock only when the counts differ.
        """
        diff = cut_points - self.cut_counted
        if diff:
            with self.lock:
                self.in_flight += diff
                self.cut_counted = cut_points

    def note_journal(self, reply: dict[str, Any]) -> None:
        """Keep the journal position (``j``, ``jt``) of a reply that acknowledges (trackers configured).

        The sender calls it before the reply's mark acknowledges anything: ``wait()`` reads the
        position once its batches are acknowledged, and any such reply may be the one that does it
        (a hurried ``wait()``'s PONG can carry the mark of a batch whose ACK follows it).
        """
        j, jt = reply.get("j"), reply.get("jt")
        if type(j) is int and j > self.journal:
            self.journal = j
        if type(jt) is int and jt > self.journal_texts:
            self.journal_texts = jt

    def progress(self, acked_gen: int, points: int) -> None:
        """``points`` are acknowledged; generations up to ``acked_gen`` are durable."""
        with self.lock:
            self.in_flight -= points
            self.acked += points
            if acked_gen > self.acked_gen:
                self.acked_gen = acked_gen
            self.cond.notify_all()

    def fail(self, err: CoordinatorError, *, fatal: bool = False, lost_points: int = 0) -> None:
        """Record an error for the next wait()/close(); ``lost_points`` will never be delivered."""
        with self.lock:
            if fatal and self.fatal is None:
                self.fatal = err
            elif not fatal:
                self.errors.append(err)
            self.in_flight -= lost_points
            self.lost += lost_points
            self.cond.notify_all()

    def dropped(self, points: int) -> None:
        """``points`` were dropped on purpose (backpressure policy drop_oldest)."""
        with self.lock:
            self.in_flight -= points
            self.dropped_points += points
            self.cond.notify_all()

    def stats(self) -> dict[str, Any]:
        """Counters for reports and tests."""
        with self.lock:
            return {
                "accepted": self.acked + self.pending + self.in_flight + self.lost + self.dropped_points,
                "pending": self.pending + self.in_flight,
                "dropped": self.dropped_points,
                "acked": self.acked,
                "lost": self.lost,
                "generation": self.gen,
                "acked_generation": self.acked_gen,
            }
