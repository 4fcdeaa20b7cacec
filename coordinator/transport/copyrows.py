"""What a copy writes (:mod:`.copies`): the rows since the last copy, the ids they go by, rows written through.

A generation's records name each column key and each frame's key tuple once, by an id (a frame
again, with its keys' last steps, once it has rows logged without a step), and then give rows
under that id (:mod:`.copyfile` has the layout). A copy takes every row logged since the last:
this class counts, per column and frame, the rows of the generation already on disk. The copy
due next then finds nothing of a frame whose rows were written through at their calls
(:meth:`CopyRows.row`: the hot path's :class:`~coordinator.transport.buffer.Through`): a paced
rank's dict of 100 numbers costs ~5 µs more per call that way, against a copy of its frame of
~50 µs on the cold CPU the call finds (docs/performance.md, round 40). When a copy is made, and
what makes it refuse, is :class:`~coordinator.transport.copies.Copies`'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coordinator.core.columns import to_le
from coordinator.core.numbering import explicit
from coordinator.transport.buffer import Buffer
from coordinator.transport.copyfile import CUT, HEAD, ROW, ROW_CHECK, ROW_TAG, ROWS, ZERO_HEAD, CopyFile, copy_path
from coordinator.transport.frames import Frame
from coordinator.transport.plain import packb

__all__ = ["CopyRows"]


class CopyRows:
    """A rank's two copy files and what the generation being copied has in them (lock held throughout)."""

    def __init__(
        self,
        directory: Path,
        buf: Buffer,
        last_step: Callable[[str], int],
        failed: Callable[[CopyFile, OSError], None],
    ) -> None:
        """Args:
        directory: the rank's spool directory.
        buf: the run's buffer.
        last_step: a key's last step as the sender's numbering has it (named with its column).
        failed: told of a write that failed (it reports it and sets :attr:`gen` to -1).
        """
        self._buf = buf
        self._last_step = last_step
        self._failed = failed
        self.slots = (CopyFile(copy_path(directory, 0)), CopyFile(copy_path(directory, 1)))
        self.gen = -1
        """The generation being copied (its slot: ``gen % 2``); -1: none."""
        self._done: dict[object, int] = {}
        """Frame key tuple or column key -> its rows of this generation already copied."""
        self._frames: dict[tuple[str, ...], Frame] = {}
        """The frames copied from in this generation (one gone within it was spilled into columns)."""
        self._ids: dict[object, int] = {}
        """Frame key tuple or column key -> its id in this generation's records."""
        self._based: set[tuple[str, ...]] = set()
        """The frames of this generation named with their keys' last steps (they have rows without a step)."""
        self._seen = 0
        """``pending`` at the last copy of this generation."""
        self._thru = 0
        """Points written through since then (:meth:`row`)."""
        self.copies = 0
        """Copies written (for tests and benchmarks)."""
        self.rows_through = 0
        """Rows written through (for tests and benchmarks)."""

    def take(self) -> int:
        """Copy the rows logged since the last copy, as one record (the copy found nothing to refuse).

        Returns the points copied (written through since the last copy included), or -1: the write
        failed (reported).
        """
        b = self._buf
        if b.gen != self.gen:
            self.gen = b.gen
            self._done, self._frames, self._ids, self._based = {}, {}, {}, set()
            self._seen = self._thru = 0
        elif b.pending == self._seen + self._thru:
            # Every point logged since the last copy was written through at its call: nothing to look for.
            thru, self._thru, self._seen = self._thru, 0, b.pending
            return thru
        entries, names, points = self._rows(b)
        thru, self._thru, self._seen = self._thru, 0, b.pending
        if entries and not self._write(packb([ROWS, self.gen, entries, names])):
            return -1
        return points + thru

    def cut(self, gen: int, first_seq: int, last_seq: int) -> None:
        """Record that generation ``gen`` was cut as batches ``first_seq..last_seq``, if it has a copy."""
        if self.slots[gen % 2].gen != gen:
            return  # nothing of it was copied
        saved, self.gen = self.gen, gen
        if self._write(packb([CUT, gen, first_seq, last_seq])):
            self.gen = saved
        # else: its copy is gone (failed); its batches go ahead to the spool as without copies

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
        """Append one copy to this generation's file; False: it failed (reported; copies pause)."""
        if not self._append(body):
            return False
        self.copies += 1
        return True

    def _append(self, body: bytes) -> bool:
        """Append one record to this generation's file, taken for it at its first; False: it failed (reported).

        The file is mapped: a record is two slice copies, no system call (a ``write`` on this VM's
        ext4 took ~40 µs of a ~90 µs copy on a paced sender's cold CPU).
        """
        slot = self.slots[self.gen % 2]
        try:
            if slot.gen != self.gen:
                slot.start(self.gen)
            slot.write(body)
        except OSError as e:
            self._failed(slot, e)
            return False
        return True

    # ------------------------------------------------------------------ training thread: written through

    def row(self, keys: tuple[str, ...], fr: Frame) -> None:
        """Write through the row of plain numbers a call just appended to frame ``fr`` (lock held).

        One short record at the call (a dict's row of doubles), so that the copy due next finds
        nothing of the frame to take: a copy of a paced rank's 100-key frame costs ~50 µs on its
        cold CPU, once every call or two at 50 steps/s. Left to that copy where it would not take
        the row now: this generation is not being copied (cut and not yet written ahead,
        refused, failed), it holds what a copy refuses, or an earlier row is not copied yet.
        """
        b = self._buf
        gen = self.gen
        if gen != b.gen or b.fields or b.texts:
            return
        n = len(fr.steps)
        if self._done.get(keys, 0) != n - 1:
            return
        step, w = fr.steps[n - 1], len(keys)
        i = self._ids.get(keys)
        slot = self.slots[gen % 2]
        m, pos = slot.map, slot.pos
        if i is None or (step < 0 and keys not in self._based) or m is None or slot.gen != gen:
            self._row_named(keys, fr, n, i)
            return
        end = pos + HEAD.size + ROW.size + 8 * w
        if end + HEAD.size > len(m):
            self._row_named(keys, fr, n, i)
            return
        self._done[keys] = n
        ROW.pack_into(m, pos + HEAD.size, ROW_TAG, gen, i, step)
        m[pos + HEAD.size + ROW.size : end] = to_le(memoryview(fr.values)[(n - 1) * w :])
        m[end : end + HEAD.size] = ZERO_HEAD
        HEAD.pack_into(m, pos, end - pos - HEAD.size, ROW_CHECK)  # last: the record is there
        slot.pos = end
        self._thru += w
        self.rows_through += 1

    def _row_named(self, keys: tuple[str, ...], fr: Frame, n: int, i: int | None) -> None:
        """:meth:`row` where the frame is named first in this generation (again, with its keys' last steps,
        at its first row without a step), or the file is not taken or has no room yet."""
        step, w = fr.steps[n - 1], len(keys)
        values = to_le(memoryview(fr.values)[(n - 1) * w :])
        if i is None or (step < 0 and keys not in self._based):  # named as a copy names it
            names: list[list[object]] = []
            if step < 0:
                self._based.add(keys)
                i = self._name(keys, names, list(keys), list(map(self._last_step, keys)))
            else:
                i = self._name(keys, names, list(keys))
            body = packb([ROWS, self.gen, [[i, to_le(fr.steps[n - 1 :]), values]], names])
        else:
            body = ROW.pack(ROW_TAG, self.gen, i, step) + values
        self._frames[keys] = fr
        self._done[keys] = n
        if self._append(body):
            self._thru += w
            self.rows_through += 1
