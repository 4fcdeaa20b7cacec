"""Copies: the points of the generation not yet cut, on disk every kill window between flushes.

The flush interval sets both what a paced job's logging costs (a flush is paid per wake-up of
the sender, its ZeroMQ thread and the aggregator, on cold caches) and what a SIGKILLed rank may
lose (the generation not yet cut). ``Settings.kill_window_s`` shorter than the flush interval
takes the two apart: the points logged since the last copy are appended to a file in the rank's
spool directory (the page cache keeps what a killed process wrote, as it keeps the spool), so
that no point stays only in memory longer than the kill window.

*Who copies.* The training thread, in the ``log()`` or ``append()`` call that finds half a kill
window passed since the last copy (the buffer's mark, :meth:`Buffer.copies_at
<coordinator.transport.buffer.Buffer.copies_at>`, brings a call here about then; the others pay
nothing): a few array slices and two copies into a mapped file, ~50 µs on a paced rank's cold
CPU, and no thread woken. Each copy sets a timer (:mod:`.timerfd`) one kill window ahead; a rank
that stops logging does not push it back, so it fires, and the sender thread copies what is left
(:meth:`Copies.backstop`).

*Two files, reused.* Generation ``g`` is copied into ``copy-<g % 2>``, from its start: a mapped
file whose pages stay in place from one generation to the next (fresh pages cost a fault and the
file system's work on each first store: ~40-50 µs a copy on this VM's ext4).

*Every cut is written ahead.* The sender numbers a cut's batches, records the numbers in its copy
file (:meth:`Copies.cut`), writes them to the spool and only then sends them. What a kill leaves
on disk is every point up to some moment, never a later point without an earlier one (a gap in a
series): the cut's batches hold points its copy does not (those logged after its last copy), so
the next generation is not copied until the sender has written the cut ahead
(:meth:`Copies.cut_done`), and while a cut is only in memory (its write failed) a copy refuses
(the sender cuts instead); a file is thus taken again only once the generation it held is on
disk in the spool. Recovery
(:mod:`~coordinator.aggregator.recovery`: a lost rank's spool at the run's end, ``coordinator
sync``) replays the spool first, then each copy the spool does not cover, as the sender's next
batch (:func:`read_copies`):

* no cut record: the generation was never cut, nothing of it is in the spool: its points go in;
* a cut record whose batches the aggregator now holds (up to its last number): skipped;
* one whose first batch it does not hold: the write-ahead never happened; its points go in;
* one whose batches it holds only in part (a kill between two writes ahead of one cut of several
  batches): those batches hold each key's first points (a cut splits every key's points in
  order), counted from the spool, and the copy's other points go in; only if the spool does not
  hold them all is the copy skipped and reported (an event, an error).

A copy takes the frames (dicts) and the columns as they are, a point logged without a step as
-1: a column is named in its generation's first record with its key's last step as the sender's
numbering has it (unchanged until the generation is cut), a frame with its keys' last steps once
it has such a row, and reading it back numbers the -1s from there, as the sender would have.
Anything else in the generation (a GPU tensor whose copy to the host is still queued, a field
write, a text; a tensor's snapshot that is there to read is read first: ``deferred``) makes the
copy refuse and the sender cut instead, as at every flush interval before: the kill window holds
either way. The automatic kill window of a large job (``cut=False``: ``Settings.kill_window``)
does not cut early: a refused generation waits for its flush, so that the ranks' cuts stay at the
rate the aggregator's budget sets. A failed write (full disk) is reported once a pause, and the
sender cuts instead (or, without early cuts, lets the flush take the generation) until a second
has passed.

The files and their records: :mod:`.copyfile`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.core.columns import to_le
from coordinator.core.numbering import explicit
from coordinator.errors import SinkError
from coordinator.transport.buffer import NEVER, Buffer
from coordinator.transport.copyfile import CUT, HEAD, ROWS, ZERO_HEAD, CopyFile, copy_path
from coordinator.transport.frames import Frame
from coordinator.transport.plain import packb
from coordinator.transport.timerfd import TimerFd

__all__ = ["Copies", "open_copies"]

_log = logging.getLogger(__name__)

_PAUSE_AFTER_FAILURE_S = 1.0
_MIN_TIMER_S = 1e-4
"""The timer's shortest setting (0 would turn it off)."""
_FAR = 1 << 40
"""Points past ``pending`` that put the copy mark out of reach (until the next cut resets it)."""


def open_copies(
    directory: str | os.PathLike[str],
    buf: Buffer,
    rank: int,
    window_s: float,
    *,
    cut: bool,
    numbering: object,
) -> Copies | None:
    """:class:`Copies` for the rank's spool directory; None (logged) where the system has no timer for them.

    ``numbering``: the sender's step numbering; the client's has ``deferred`` and ``last`` (:class:`Copies`).
    """
    deferred = getattr(numbering, "deferred", None)
    last_step = getattr(numbering, "last", None)
    try:
        return Copies(directory, buf, rank=rank, window_s=window_s, cut=cut, deferred=deferred, last_step=last_step)
    except OSError as e:
        _log.warning("rank %d: no copies between flushes (%s): the kill window is the flush interval", rank, e)
        return None


class Copies:
    """The copies of a rank's uncut generation: made by the training thread, or the sender's timer (lock held)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        buf: Buffer,
        *,
        rank: int,
        window_s: float,
        cut: bool = True,
        deferred: Callable[[], bool] | None = None,
        last_step: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        directory: the rank's spool directory (created if missing).
        buf: the run's buffer (copied from; it calls :meth:`check` at its copy mark).
        rank: this rank (for messages).
        window_s: the kill window: no point stays uncopied longer (plus scheduling).
        cut: whether what a copy cannot take is cut within the kill window (``Settings.kill_window_s``
            set); False (the automatic window of a large job): it waits for the flush interval, as
            without copies, and the generation is not copied further (its cuts stay at the flush
            interval's rate, which keeps the aggregator's batches a second within its budget).
        deferred: True while a tensor logged waits to be read (lock held): the sender must cut
            (the client's step numbering says; None: never).
        last_step: a key's last step as the sender's numbering has it (None: -1 for every key),
            recorded with its column, so that recovery numbers the points logged without a step
            as the sender would have (:func:`~coordinator.core.numbering.number_steps`).
        clock: the monotonic clock (tests give their own).

        Raises:
            OSError: no timer (:class:`~coordinator.transport.timerfd.TimerFd`).
        """
        self.dir = Path(directory)
        self.timer = TimerFd()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buf = buf
        self._rank = rank
        self._window = window_s
        self._cut = cut
        self._deferred = deferred if deferred is not None else _never
        self._last_step = last_step if last_step is not None else _no_steps
        self._clock = clock
        self._slots = (CopyFile(copy_path(self.dir, 0)), CopyFile(copy_path(self.dir, 1)))
        self._gen = -1
        """The generation being copied (its slot: ``gen % 2``); -1: none."""
        self._done: dict[object, int] = {}
        """Frame key tuple or column key -> its rows of this generation already copied."""
        self._frames: dict[tuple[str, ...], Frame] = {}
        """The frames copied from in this generation (one gone within it was spilled into columns)."""
        self._ids: dict[object, int] = {}
        """Frame key tuple or column key -> its id in this generation's records."""
        self._based: set[tuple[str, ...]] = set()
        """The frames of this generation named with their keys' last steps (they have rows without a step)."""
        self._unspooled: dict[int, int] = {}
        """Generation -> its last batch number, for those cut and not yet all on disk in the spool."""
        self._settled = buf.gen - 1
        """The last generation whose cut the sender has finished writing ahead (:meth:`cut_done`)."""
        self._retry_at = 0.0
        self._last = -window_s
        """When the last copy (or cut) was made: the next is due half a kill window later."""
        self._rate = 0.0
        """Points a second logged between the last two copies: where to put the next copy mark."""
        self.copies = 0
        """Copies written (for tests and benchmarks)."""
        with buf.lock:
            buf.copy_check = self.check
            buf.slow_write = self._slow_write
            buf.copies_at(buf.pending)

    # ------------------------------------------------------------------ training thread (lock held)

    def check(self) -> None:
        """The hot path reached the copy mark (lock held): copy if half a kill window passed, else move the mark."""
        now = self._clock()
        b = self._buf
        due = self._last + self._window / 2
        if now < due:
            b.copies_at(b.pending + max(1, int(self._rate * (due - now))))
            return
        if not self._copy(now):
            b.request_cut()

    def _slow_write(self) -> None:
        """A field or a text was written (lock held): a copy refuses them, so the timer must bring a cut."""
        if self._cut and not self.timer.armed:
            self.timer.arm(self._window)

    # ------------------------------------------------------------------ sender thread

    def backstop(self) -> bool:
        """The sender woke (no flush due): if the timer fired, copy what the training thread left; False: cut."""
        if not self.timer.fired():
            return True
        with self._buf.lock:
            return self._copy(self._clock(), backstop=True)

    # ------------------------------------------------------------------ either thread, lock held

    def _copy(self, now: float, *, backstop: bool = False) -> bool:
        """Copy the points logged since the last copy and set the timer; False: a copy cannot take the generation.

        After a backstop that found nothing, the timer stays off and the next call copies at once.
        """
        b = self._buf
        if b.gen > self._settled + 1:
            # The sender is still encoding or writing ahead the generation before: a copy of this
            # one now could outlive points of that one (a kill before they are on disk), a gap in
            # a series. The hot path asks nothing more; the sender's cut_done sets the mark again.
            b.copies_at(b.pending + _FAR)
            return True
        copied = self._write_rows(b)
        if copied < 0 and not self._cut:
            # Not cut early: the generation waits for its flush, and its later points with it (a
            # copy of them alone could outlive the refused ones: a gap). Only the cut resets the mark.
            b.copies_at(b.pending + _FAR)
            return True
        if copied < 0:
            # A cut must take them within a kill window of the last copy or cut: now if that is
            # past (or the sender's timer asks), else the timer brings the sender then, and the
            # hot path asks nothing more until the cut: a rank that writes a field every step is
            # cut once a kill window, as often as flushes at that interval, not at every check.
            left = self._last + self._window - now
            if backstop or left <= 0:
                return False
            self.timer.arm(left)
            b.copies_at(b.pending + _FAR)
            return True
        if copied == 0 and backstop:
            b.copies_at(b.pending)
            return True
        elapsed = now - self._last
        self._rate = copied / elapsed if elapsed > 0 else 0.0
        self._last = now
        b.copies_at(b.pending + max(1, int(self._rate * self._window / 2)))
        self.timer.arm(self._window)
        return True

    def _write_rows(self, b: Buffer) -> int:
        """Append the new rows as one record; the points written, or -1: refused (what it cannot take, a failure)."""
        if b.fields or b.texts or self._deferred() or self._clock() < self._retry_at:
            return -1
        if self._unspooled:
            # A cut is only in memory (its write-ahead failed): a copy of a later generation could
            # outlive its points; and its own copy, if it has one, must stay in its file.
            return -1
        slot = self._slots[b.gen % 2]
        if b.gen != self._gen:
            self._gen = b.gen
            self._done, self._frames, self._ids, self._based = {}, {}, {}, set()
        entries, names, points = self._rows(b)
        if not entries:
            return 0
        if slot.gen != b.gen:  # the generation's first record: the file is taken only now
            try:
                slot.start(b.gen)
            except OSError as e:
                self._failed(slot, e)
                return -1
        if not self._write(packb([ROWS, self._gen, entries, names])):
            return -1
        return points

    def _rows(self, b: Buffer) -> tuple[list[list[object]], list[list[object]], int]:
        """The new rows as record entries, the ids they name first, and their points."""
        done = self._done
        for kt, fr in list(self._frames.items()):
            if b.frames.get(kt) is not fr:  # spilled into columns: they start with the rows copied
                copied = done.pop(kt, 0)
                for k in kt:
                    done[k] = copied
                del self._frames[kt]
        new = [(k, c, done.get(k, 0)) for k, c in b.cols.items() if len(c[0]) > done.get(k, 0)]
        entries: list[list[object]] = []
        names: list[list[object]] = []
        points = 0
        for k, (steps, values), a in new:
            n = len(steps)
            points += n - a
            i = self._ids.get(k)
            if i is None:  # named with the key's last step: its -1 steps are numbered from it when read back
                i = self._name(k, names, k, self._last_step(k))
            entries.append([i, to_le(memoryview(steps)[a:n]), to_le(memoryview(values)[a:n])])
        for kt, fr in b.frames.items():
            n = len(fr.steps)
            a = done.get(kt, 0)
            if n > a:
                w = len(kt)
                points += (n - a) * w
                rows = memoryview(fr.steps)[a:n]
                i = self._ids.get(kt)
                if kt not in self._based and not explicit(rows):  # named (again) with its keys' last steps
                    self._based.add(kt)
                    i = self._name(kt, names, list(kt), list(map(self._last_step, kt)))
                elif i is None:
                    i = self._name(kt, names, list(kt))
                entries.append([i, to_le(rows), to_le(memoryview(fr.values)[a * w : n * w])])
                self._frames[kt] = fr
        # Counted only once the rows are sure to be written (a refusal above copies nothing).
        for k, (steps, _) in b.cols.items():
            done[k] = len(steps)
        for kt, fr in b.frames.items():
            if fr.steps:
                done[kt] = len(fr.steps)
        return entries, names, points

    def _name(self, k: object, names: list[list[object]], *name: object) -> int:
        """``k``'s id in this generation's records (a key, or a frame's key tuple; new if none), named in ``names``.

        A frame is named again, with its keys' last steps, once it has rows logged without a step.
        """
        i = self._ids.get(k)
        if i is None:
            i = self._ids[k] = len(self._ids)
        names.append([i, *name])
        return i

    def _write(self, body: bytes) -> bool:
        """Append one record to this generation's file; False: it failed (reported; copies pause).

        The file is mapped: a record is two slice copies, no system call (a ``write`` on this VM's
        ext4 took ~40 µs of a ~90 µs copy on a paced sender's cold CPU).
        """
        slot = self._slots[self._gen % 2]
        try:
            slot.write(body)
        except OSError as e:
            self._failed(slot, e)
            return False
        self.copies += 1
        return True

    def _failed(self, slot: CopyFile, e: OSError) -> None:
        """A copy failed (lock held): reported for ``wait()``; copies pause, then start the generation again.

        The file's first header is zeroed (its blocks are allocated: no store into the map fails):
        what the generation's earlier records hold is in the buffer or its cut, and read back
        without the cut's record (a failure may be that record's) they would go in twice.
        """
        self._retry_at = self._clock() + _PAUSE_AFTER_FAILURE_S
        if slot.map is not None:
            slot.map[0 : HEAD.size] = ZERO_HEAD
        slot.close()
        slot.gen, self._gen = -1, -1
        then = "the sender cuts instead" if self._cut else "they wait for the flush"
        err = SinkError(f"rank {self._rank}: a copy of the uncut points failed ({e}); {then}")
        self._buf.errors.append(err)
        self._buf.cond.notify_all()
        _log.error("%s", err)

    def now(self) -> float:
        """The copies' clock (monotonic): the sender reads it before a cut, for :meth:`cut_done`."""
        return self._clock()

    def cut_done(self, gen: int, cut_at: float) -> None:
        """The sender cut generation ``gen`` at ``cut_at`` and wrote it ahead (sender thread): copy the next.

        Nothing older than the cut is uncopied. The next call checks again: the next copy is due
        half a kill window after the cut, at once if the write-ahead took that long. The timer is
        set a kill window from the cut, not from the last copy before it, so it does not fire (a
        wake-up of the sender) before the training thread's next copy.
        """
        b = self._buf
        with b.lock:
            self._settled = gen
            self._last = cut_at
            b.copies_at(b.pending)
            self.timer.arm(max(cut_at + self._window - self._clock(), _MIN_TIMER_S))

    def cut(self, gen: int, first_seq: int, last_seq: int) -> None:
        """Generation ``gen`` was cut as batches ``first_seq..last_seq``, to be written ahead now (sender thread).

        Records that in its copy file, if it has one, before the batches go to the spool: a kill
        between the two leaves the copy, and recovery then finds the batches by number. Its file
        is taken again (generation ``gen + 2``) only once they are on disk (:meth:`spooled`).
        """
        with self._buf.lock:
            self._unspooled[gen] = last_seq  # no copy is made until they are on disk
            slot = self._slots[gen % 2]
            if slot.gen != gen:
                return  # nothing of it was copied
            saved, self._gen = self._gen, gen
            if self._write(packb([CUT, gen, first_seq, last_seq])):
                self._gen = saved
            # else: its copy is gone (_failed); its batches go ahead to the spool as without copies

    def spooled(self, through: int) -> None:
        """Every batch numbered up to ``through`` is on disk: copies refused for their cuts may go on."""
        if self._unspooled:
            with self._buf.lock:
                for gen, last in list(self._unspooled.items()):
                    if last <= through:
                        del self._unspooled[gen]

    def close(self, *, keep_uncut: bool = False) -> None:
        """The run closed, its cuts written ahead (:meth:`spooled` called): the files go, unless needed.

        Kept: with ``keep_uncut`` (points stay in the buffer: the last cut was refused) and while
        a cut could not be written ahead; each is then what holds those points on disk.
        """
        with self._buf.lock:  # no call copies (nor sets the timer) once the hooks are gone
            self._buf.copy_check = self._buf.slow_write = None
            self._buf.copies_at(NEVER)
            self.timer.close()
            keep = keep_uncut or bool(self._unspooled)
            for slot in self._slots:
                slot.close()
                if not keep:
                    _remove(slot.path)


def _remove(path: Path) -> None:
    """Remove a copy file no longer needed; one that cannot be is logged (its generation's next file truncates it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        _log.warning("could not remove the copy file %s: %s", path, e)


def _never() -> bool:
    """The default ``deferred``: no tensor waits."""
    return False


def _no_steps(key: str) -> int:
    """The default ``last_step``: no key has a step yet."""
    return -1
