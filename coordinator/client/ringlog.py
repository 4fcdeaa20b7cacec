"""A rank's ring (``Settings.rings``): ``log()`` rows written straight into memory the aggregator reads.

A ``log()`` of a dict of plain numbers at an explicit step is one record in the rank's ring
(:mod:`~coordinator.transport.ringrows`), packed on the training thread with one ``pack_into``:
no buffer, no sender work, no socket. The aggregator reads the ring before each commit and frees
its bytes after it (:mod:`coordinator.aggregator.rings`); the rank's ``wait()`` and ``sync()``
need nothing more, since the STATE they end with is answered after a commit that read the ring.

The ring is offered in the rank's HELLO and written only once a WELCOME said the aggregator reads
it (it runs on this machine and could open it). Everything else goes over the socket as before:
a call with tensors, strings or a ``policy``; keys that already have points waiting in the
buffer; a row the full ring has no room for (counted as ``ring_full``); and a row one of whose
keys has a write over the socket not acknowledged yet, which goes behind it. With the aggregator
reading a rank's ring before each of its batches, a key's writes are applied in the order they
were made, whichever path each took (two writes of one step keep the later, as on the socket).
A key with a frame in the ring is *owned*: the sender never sees its steps, so a write of it
without a step is numbered here (:meth:`RingLog.route`). A killed rank loses none of the rows it
wrote: they are in the ring's file, which the aggregator reads to its end.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from time import monotonic_ns
from typing import Any

from coordinator.client.devices import check_tensor, is_tensor
from coordinator.client.hotpath import PLAIN
from coordinator.client.keys import KeyRegistry
from coordinator.client.rowpath import FrameRecord, row_path
from coordinator.core.values import check_step, to_metric_value
from coordinator.transport.buffer import Buffer
from coordinator.transport.ringplace import boot_id, unread_bytes
from coordinator.transport.ringrows import STAMP_SHIFT, RowWriter, names_path

__all__ = ["IN_RING", "RingLog"]

_log = logging.getLogger("coordinator")

IN_RING = -2
""":meth:`RingLog.route`'s answer for a call written into the ring."""
SPLIT = -3
""":meth:`RingLog.route`'s answer for a call without a step whose keys take steps of their own (``RingLog.steps``)."""
_CHECKED = PLAIN - {int}
"""Value types that need no check (an int may be past a float's range)."""
_MARK_MASK = 255
"""A mark that counts the committed points (:meth:`RingLog.confirmed`) every 256 writes."""


class RingLog:
    """The training thread's side of the rank's ring; used under the buffer's lock.

    Args:
        rows: the ring, made by :func:`~coordinator.client.ringopen.open_ring`.
        keys: the run's key registry (a frame's keys are checked and registered once, as series).
        buf: the run's buffer (a key with points waiting there keeps its order: it goes there).
    """

    def __init__(self, rows: RowWriter, keys: KeyRegistry, buf: Buffer) -> None:
        self._rows = rows
        self._ring = rows.ring
        self._pack_row = rows.ring.pack_row
        self._pack_scalar = rows.ring.pack_scalar
        self._keys = keys
        self._buf = buf
        self.check_numeric: Callable[[str], None] = lambda key: None
        """Raises for a key that is a text series (the run's text appender's, set once it exists)."""
        self._frames: dict[tuple[str, ...], FrameRecord] = {}
        """Per key tuple admitted to the ring: ``[frame id, row framing, write number, step, keys, held, solo]`` (the
        write number and step of its last row, -1 before the first; the buffer's generation of the last write of
        one of its keys over the socket while that may be unacknowledged, else -1: see :meth:`row`; 1 while none of
        its keys is in another frame). A frame, once here, is never replaced or removed: the C path keeps its own
        index of the one-key frames, and numbers a call without a step of a solo frame whose last row is its keys'
        last write (not held) after that row, as :meth:`route` would."""
        self.on = False
        """Set by a WELCOME that says the aggregator reads the ring (sender thread)."""
        self._read = False
        """Whether a WELCOME ever said the ring is read (:meth:`welcome`)."""
        self._hello: dict[str, Any] | None = None
        """The HELLO the ring is offered in (:meth:`offer_in`)."""
        self.full = 0
        """Rows the full ring had no room for (sent over the socket instead)."""
        self.held = 0
        """Rows sent over the socket behind an unacknowledged write of one of their keys there (:meth:`row`)."""
        self.nudge: Callable[[], None] | None = None
        """Asks the aggregator to read the ring now (the sender's ``ask_read``), once it is past a quarter full."""
        self._nudge_at = 0
        self._closed = False
        self._confirmed = 0
        self._marks: deque[tuple[int, int]] = deque()
        """(ring position, points written before it), one for each :meth:`confirmed` call still ahead of the reader."""
        self._marks_lock = threading.Lock()
        self.owned: dict[str, list[FrameRecord]] = {}
        """Keys of the key tuples admitted to the ring (:meth:`_admit`), each with those tuples' frames (not the
        tuples, hashed once per key by a held row): their steps are numbered here (:meth:`route`), not by the sender."""
        self._seq = 0
        self._heard_at = 0
        self._key_at: dict[str, tuple[int, int]] = {}
        """Per owned key: (write number, step) of its last write outside a row (a tensor, a scalar's append)."""
        self.numbered: Callable[[str], int] = lambda key: -1
        """The sender's last step of a key (its ``StepNumbering.last``, set with the sender): where a key the sender
        numbered continues once the ring numbers it."""
        self.steps: dict[str, int] = {}
        """Per key, the step of the last call :meth:`route` answered :data:`SPLIT` (-1: the sender numbers it)."""
        self.row, self._new_frame = row_path(self, rows.ring, self._row)
        """Write a row (:meth:`_row`); its common case in C where that is built (:mod:`coordinator.client.rowpath`)."""

    @property
    def points(self) -> int:
        """Points written into the ring (counted as each row is published: right through an interrupt)."""
        return self._ring.tally

    @property
    def path(self) -> Path:
        return self._ring.path

    def offer_in(self, hello: dict[str, Any]) -> None:
        """Offer the ring in the rank's HELLO (``hello``, sent again on each reconnect): where it is, and on which
        machine. :meth:`welcome` takes the offer out again if it lets the ring go."""
        hello["ring"] = {"path": str(self.path), "boot": boot_id()}
        self._hello = hello

    def heard(self) -> bool:
        """Whether rows went into the ring since the last call (sender thread): the aggregator reads them within
        its drain interval and counts them as hearing from the rank, so the rank's heartbeat may wait."""
        n = self._ring.tally
        moved, self._heard_at = n != self._heard_at, n
        return moved

    def welcome(self, body: dict[str, Any]) -> None:
        """A WELCOME: write into the ring from now on if it says the ring is read (sender thread).

        A ring refused before any WELCOME said it is read (the aggregator runs on another machine, or
        could not open it) is let go at once: closed, removed and offered no more, so a rank on a node
        without the aggregator does not keep 16 MiB of shared memory it never writes. One read before
        and refused now (an aggregator started again that could not reopen it) may hold rows: it stays.
        """
        on = body.get("ring") is True
        if on:
            self._read = True
        elif not self._read:
            self._let_go()
            return
        elif self.on:
            _log.warning(
                "rank's ring %s is no longer read by the aggregator (%d bytes unread): its rows go over the socket",
                self.path,
                self._ring.written - self._ring.released,
            )
        self.on = on

    def _let_go(self) -> None:
        """Close and remove a ring no aggregator read (nothing was written into it), and take back its offer."""
        if self._hello is not None:
            self._hello.pop("ring", None)
            self._hello = None
        with self._marks_lock:
            if self._closed:
                return
            self._closed = True
            self.on = False
        self._rows.close()
        self.path.unlink(missing_ok=True)
        names_path(self.path).unlink(missing_ok=True)
        _log.info(
            "rank's ring %s removed: the aggregator does not read it (it runs on another machine, or could not open "
            "it); every row goes over the socket",
            self.path,
        )

    def route(self, data: dict[str, Any], step: int, policy: str | None) -> int:
        """Where a ``log()`` or ``append()`` call goes that :meth:`row` did not take (the caller tries it first
        for a call at a step without a policy, one call less on the hot path): :data:`IN_RING` (written), the
        step for the socket path (-1: the sender numbers it), or :data:`SPLIT`: over the socket, each key at its
        own step (:attr:`steps`).

        A call without a step is numbered here where every key's last step is known here and the same (an owned
        key's, or one the sender has numbered every point of: :meth:`_last`), as the sender would number it, and
        goes into the ring if it can: its keys are owned from then on. A call without a step that writes owned keys
        whose last steps differ, or beside keys the sender numbers, is :data:`SPLIT`: each key continues from its
        own last step, as the sender numbers the keys of a dict whose keys were last logged apart.

        Raises:
            TypeError, ValueError: a call that writes an owned key, checked here as the socket path
                would before its step counts as the key's last (nothing of it kept).
        """
        owned = self.owned
        if step < 0 and policy is None and self.on and (last := self._shared_last(data)) is not None:
            step = last + 1
            if self.row(data, step):
                return IN_RING
        if not owned or owned.keys().isdisjoint(data):
            return step
        self._check(data, step)
        steps = {k: -1 if k not in owned or (x := self._last(k)) is None else x + 1 for k in data} if step < 0 else {}
        if len(set(steps.values())) == 1:  # one step for every key (-1: the sender numbers them all)
            step = steps.popitem()[1]
            steps = {}
        self._seq += 1
        seq, gen = self._seq, self._buf.gen
        for k in data:
            if (frames := owned.get(k)) is not None:
                if (at := steps.get(k, step)) >= 0:
                    self._key_at[k] = (seq, at)
                for f in frames:  # its rows wait behind this write (row())
                    f[5] = gen
        if steps:
            self.steps = steps
            return SPLIT
        return step

    def _shared_last(self, data: dict[str, Any]) -> int | None:
        """The last step every key of ``data`` has (:meth:`_last`), or None: one is not known here, their last steps
        differ, or a key not owned yet would not be a row's (a policy of its own, whose claim travels over the
        socket; a value a row does not take, a tensor: its writes keep going over the socket, numbered there)."""
        policies, owned = self._keys.policies, self.owned
        last = None
        for k, v in data.items():
            if type(k) is not str or (k not in owned and (k in policies or v.__class__ not in PLAIN)):
                return None
            if (x := self._last(k)) is None:
                return None
            if last is not None and x != last:
                return None
            last = x
        return last

    def _check(self, data: dict[str, Any], step: int) -> None:
        """Raise what the socket path would for a bad key, value or step of ``data`` (a call that writes an owned
        key): a call it refuses holds no row back (:meth:`row`)."""
        if step >= 0:
            check_step(step)
        if self._keys.series.issuperset(data) and _CHECKED.issuperset(map(type, data.values())):
            return  # known keys and values nothing refuses (a held frame's row: in C, not key by key)
        for k, v in data.items():
            if k not in self._keys.series:
                self._keys.check_new(k)
                self.check_numeric(k)
            if v.__class__ is int or v.__class__ not in PLAIN:
                if is_tensor(v):
                    check_tensor(k, v)
                else:
                    to_metric_value(k, v)  # an int past a float raises too

    def _last(self, key: str) -> int | None:
        """The step of ``key``'s last write where it is known here, for numbering the next; None: the sender numbers it.

        Known for an owned key written since (a row, or a write over the socket at a step), and for a key the
        sender has numbered every point of: none in the buffer, every generation cut before acknowledged (numbered
        before it was sent), so its last step (a resumed rank's from the WELCOME, which came before the ring was
        written) cannot move. An owned key not written since it was owned is numbered as before: by the sender.
        """
        best = self._key_at.get(key, (-1, -1))
        for f in self.owned.get(key, ()):
            if f[2] > best[0]:
                best = (f[2], f[3])
        if best[0] >= 0:
            return best[1]
        b = self._buf
        if key in b.framed or ((c := b.cols.get(key)) is not None and c[0]):
            return None
        return self.numbered(key) if b.acked_gen >= b.gen - 1 or key not in self._keys.series else None

    def _row(self, data: dict[str, Any], step: int) -> bool:
        """Write ``data`` (checked by the caller: a dict) at ``step`` (>= 0) into the ring; False: the
        call takes the socket path (not for the ring, or no room), with nothing written.

        A key's writes keep their order across the two paths. The aggregator reads a rank's ring before
        each of its batches, so a row is applied before a later write over the socket. A row written
        while one of its keys has a write over the socket that may not be acknowledged yet goes over the
        socket too, behind it: a row read first would be applied before the earlier write.
        """
        if not self.on or step >> 63:  # off, or a step past int64: the socket path refuses it, nothing kept here
            return False
        kt = tuple(data)
        f = self._frames.get(kt)
        if f is None:
            f = self._admit(kt)
            if f is None:
                return False
        if f[5] > self._buf.acked_gen:  # a write of one of its keys over the socket may not be applied yet: behind it
            self.held += PLAIN.issuperset(map(type, data.values()))  # a row, not a tensor's write
            return False
        try:
            if f[4] == 1:  # a scalar: its value checked alone, packed without argument tuples
                v = data[kt[0]]
                if v.__class__ is not float and v.__class__ not in PLAIN:
                    return False
                written = self._pack_scalar(f[1], f[0], monotonic_ns() >> STAMP_SHIFT & 0xFFFFFFFF, step, v)
            elif PLAIN.issuperset(map(type, data.values())):
                written = self._pack_row(
                    f[1], (f[0], monotonic_ns() >> STAMP_SHIFT & 0xFFFFFFFF, step), data.values(), f[4]
                )
            else:
                return False
        except (struct.error, OverflowError, ValueError):
            return False  # an int past a float, a step past int64: the socket path says which
        f[5] = -1  # only now: a refused row leaves the frame behind its keys' last write (the C path's numbering)
        f[2] = seq = self._seq = self._seq + 1
        f[3] = step
        if written:
            if not seq & _MARK_MASK:
                self.confirmed()  # a mark: the count of committed points stays within this many rows
                self._look_at_fill()
            return True
        self.full += 1  # over the socket at this step: still the frame's last
        return False

    def _admit(self, kt: tuple[str, ...]) -> FrameRecord | None:
        """``kt``'s frame if its rows may go into the ring (named in the names file), else None: valid new or
        known numeric series, with no points waiting in the buffer and no policy declared on this rank (its
        claim travels over the socket), and a names file that takes the frame (not a full disk)."""
        if not kt:
            return None
        b = self._buf
        keys = self._keys
        held = -1
        for k in kt:
            c = b.cols.get(k)
            if k in b.framed or (c is not None and c[0]) or k in keys.policies:
                return None
            if c is not None:  # written over the socket before: cut into a generation before this one
                held = b.gen - 1
        try:
            for k in kt:
                self.check_numeric(k)
                keys.add_series(k)
        except (TypeError, ValueError):
            return None
        if len(kt) * 8 + 16 > self._ring.largest:
            return None
        try:
            fid, framing = self._rows.frame(kt)
        except OSError as e:  # the names file's disk is full: this frame goes over the socket
            _log.warning(
                "rank's ring %s: no room to name a frame of %d keys (%s); its rows go over the socket",
                self.path,
                len(kt),
                e,
            )
            return None
        owned = self.owned
        f = self._frames[kt] = self._new_frame(fid, framing, -1, -1, len(kt), held, int(owned.keys().isdisjoint(kt)))
        for k in kt:  # its keys are numbered here from now on (a frame without a row yet says nothing)
            for other in owned.setdefault(k, []):
                other[6] = 0  # a key in two frames: neither's last row alone says where it is
            owned[k].append(f)
        return f

    def _look_at_fill(self) -> None:
        """Past a quarter full, ask the aggregator to read the ring now (again after each further eighth written).

        It reads the rings as seldom as their filling allows, a second apart when they filled slowly: a rank
        that starts logging flat out after a pause would fill its ring first, and once one of a frame's rows
        went over the socket its rows follow it there while any of them is unacknowledged, for good at that
        rate. Looked at every 256 rows, so the hot path pays nothing for it."""
        ring = self._ring
        written = ring.written
        if written >= self._nudge_at and written - ring.released > ring.capacity // 4 and self.nudge is not None:
            self._nudge_at = written + ring.capacity // 8
            self.nudge()

    def confirmed(self) -> int:
        """Points of the ring known to be committed: those before the last position the aggregator released
        (it releases after the commit) that an earlier call marked; a call after ``wait()`` counts them all."""
        with self._marks_lock:
            if self._closed:
                return self._confirmed
            ring = self._ring
            marks = self._marks
            points = self.points  # before the position: a row published between the two is not counted early
            marks.append((ring.written, points))
            released = ring.released
            while marks and marks[0][0] <= released:
                self._confirmed = marks.popleft()[1]
            return self._confirmed

    def stats(self, st: dict[str, Any]) -> dict[str, Any]:
        """The buffer's ``stats`` (``Run.stats()``) with the ring's points among those accepted, acked
        (:meth:`confirmed`) and pending, and the ring's counters."""
        ok = self.confirmed()
        more = {"accepted": st["accepted"] + self.points, "acked": st["acked"] + ok}
        return {**st, **self.counters(), **more, "pending": st["pending"] + self.points - ok}

    def counters(self) -> dict[str, int]:
        """For the BYE and ``Run.stats()``: points written into the ring, rows it had no room for, rows held back."""
        return {"ring_points": self.points, "ring_full": self.full, "ring_held": self.held}

    def close(self) -> None:
        """Mark the ring closed (nothing more comes); the aggregator reads it to its end."""
        self.confirmed()
        with self._marks_lock:
            if not self._closed:
                self._closed = True
                self.on = False
                self._rows.close()

    def after_fork_in_child(self) -> None:
        """In a forked child (a DataLoader worker): write nothing, and let go of this copy of the ring's map and
        file. A child shares its parent's open file, and with it the ring's lock: while it lived on after its
        rank was killed, the ring would read as in use (:func:`~coordinator.transport.ringplace.left_rings`)."""
        self.on = False
        self._closed = True  # confirmed() answers what it knew; the parent's ring is not marked closed
        self._marks_lock = threading.Lock()  # another thread of the parent may have held it
        try:
            self._ring.close(mark=False)
        except BufferError as e:  # a view of the map was taken in another thread at the fork
            why = "it reads as in use while this lives"
            _log.warning("forked child %d keeps rank's ring %s open (%s): %s", os.getpid(), self.path, e, why)

    def remove(self, answered: bool) -> None:
        """After the BYE: remove the ring if its rows were all read (``answered``, or its header says every
        byte written was released after a commit), else keep it and say so.

        A ring kept holds rows no commit took; an aggregator started again for the run reads them.
        """
        path = self.path
        if not answered and unread_bytes(path) != 0:
            _log.error("rank's ring %s kept: the aggregator did not confirm it read every row", path)
            return
        # The BYE's answer came after the commit that read the ring to its end; or no answer came (the
        # aggregator was stopped) but its last commit released every byte the ring holds: nothing to keep.
        self._confirmed = self.points
        path.unlink(missing_ok=True)
        names_path(path).unlink(missing_ok=True)
