"""The hot path's branches kept out of ``Run``: frames, precise validation, undoing a rejected call, waiting for room.

A dict of plain numbers logged at one step (or without one: a row at -1) goes to its key tuple's
frame (:func:`log_frame`, :mod:`~coordinator.transport.frames`): a few C-level calls, no loop over
the keys; one with tensors among them too, through one loop. Everything else takes ``Run.log``'s
per-key path. All of it runs on the training thread with the buffer lock held (``wait_for_room``
releases it while it waits, through the buffer's condition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from coordinator.client.devices import DeviceScalars, check_tensor, is_tensor, snapshot
from coordinator.client.keys import KeyRegistry
from coordinator.core.columns import Column
from coordinator.core.values import check_step, to_metric_value
from coordinator.errors import ClosedError
from coordinator.transport.buffer import Buffer, Frame
from coordinator.transport.sender import SenderThread

__all__ = [
    "NOTHING_YET",
    "PLAIN",
    "as_dict",
    "log_frame",
    "log_slow",
    "open_frame",
    "rollback",
    "undo_point",
    "unpair",
    "wait_for_room",
]

NOTHING_YET = object()
"""``log()``'s loop key before its first key: an exception raised there (by a signal) appended nothing."""

_log = logging.getLogger("coordinator")

PLAIN = frozenset((float, int, bool, np.float64, np.float32, np.int64, np.int32))
"""Value types a frame takes, exactly (``array('d')`` converts each as the per-key path does), and
tensors (:func:`_tensor_row`); other numpy types and subclasses go per key."""


def log_frame(
    b: Buffer, data: dict[str, Any], step: int, keys: KeyRegistry, text_keys: set[str], dev: DeviceScalars
) -> bool:
    """Append one ``log()`` call's row to the frame of its key tuple; False: take the per-key path.

    The caller checked the step (-1: none given; the sender numbers the row) and at least 2
    keys. Nothing is kept when it returns False: a value the values array refuses (an int beyond
    a float) cuts the frame back to its length before the call, and the per-key path then raises
    the precise error. One-element tensors among the values (a loss kept as a tensor) are NaNs in
    the row and snapshots read on the sender thread, as on the per-key path
    (:mod:`~coordinator.client.devices`: no GPU sync here), registered at their positions in the
    frame (:func:`_tensor_row`).
    """
    vals = data.values()
    snaps: list[tuple[int, Any]] | None = None
    if PLAIN.issuperset(map(type, vals)):
        row = list(vals)
    else:
        row, snaps = _tensor_row(data)
        if snaps is None:
            return False
    kt = tuple(data)
    fr = b.frames.get(kt)
    if fr is None:
        fr = open_frame(b, kt, keys, text_keys)
        if fr is None:
            return False
    reads = [(j, *snapshot(t)) for j, t in snaps] if snaps else None  # before the row: a failure leaves nothing
    values = fr.values
    n = len(values)
    try:
        # One resize and one pass: ``extend`` of the dict's values grows the array item by item
        # (2.9 µs for 100 values against 1.6), and ``fromlist`` leaves it as it was on a refusal.
        values.fromlist(row)
        fr.steps.append(step)
        if reads:
            dev.defer_at(fr.steps, values, [(n + j, host, event) for j, host, event in reads])
    except OverflowError:  # a value past a float's range, or a step past int64 after the row went in
        del values[n:]
        return False
    except BaseException:  # also a signal's exception (Ctrl-C) between the two: the row goes whole
        if reads:
            dev.discard_from(fr.steps, n)
        del values[n:]
        del fr.steps[n // len(kt) :]
        raise
    return True


def _tensor_row(data: dict[str, Any]) -> tuple[list[Any], list[tuple[int, Any]] | None]:
    """A row of plain numbers and one-element tensors: the row (a NaN for each tensor) and the checked tensors
    by position; None for them where a value is anything else, or a tensor the per-key path refuses."""
    row: list[Any] = []
    snaps: list[tuple[int, Any]] = []
    nan = float("nan")
    for j, (k, v) in enumerate(data.items()):
        if v.__class__ in PLAIN:
            row.append(v)
        elif is_tensor(v):
            try:
                snaps.append((j, check_tensor(k, v)))
            except TypeError:
                return row, None
            row.append(nan)
        else:
            return row, None
    return row, snaps


def open_frame(b: Buffer, kt: tuple[str, ...], keys: KeyRegistry, text_keys: set[str]) -> Frame | None:
    """A new frame for key tuple ``kt`` in this generation, its keys validated; None: the call goes per key.

    None when one of the keys already has points of this generation elsewhere (a column, another
    frame: a key lives in one place, so its points stay in call order) or is not a valid new
    numeric series (the per-key path raises the precise error). Empty columns of the keys (built
    ahead by the cutter) are dropped: the frame takes the keys.
    """
    if not b.framed.keys().isdisjoint(kt):
        return None
    cols = b.cols
    if not cols.keys().isdisjoint(kt):
        if any(cols[k][0] for k in kt if k in cols):
            return None
        for k in kt:
            cols.pop(k, None)
    if not keys.series.issuperset(kt) or not text_keys.isdisjoint(kt):
        if not text_keys.isdisjoint(kt):
            return None
        try:
            for k in kt:
                keys.add_series(k)
        except (TypeError, ValueError):
            return None
    fr = b.frames[kt] = Frame(kt)
    try:
        b.framed.update(dict.fromkeys(kt, fr))
    except BaseException:  # a signal's exception (Ctrl-C): no frame whose keys are not marked framed
        del b.frames[kt]
        for k in kt:
            if b.framed.get(k) is fr:
                del b.framed[k]
        raise
    return fr


def as_dict(data: object) -> dict[str, Any]:
    """``log()``'s ``data`` as a dict (a copy of a mapping that is not one).

    Raises:
        TypeError: not a mapping.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"log() takes a dict of metrics, got {type(data).__name__}")
    return dict(data)


def log_slow(
    data: dict[str, object],
    step: int,
    keys: KeyRegistry,
    cols: dict[str, Column],
    new_column: Callable[[str], Column],
    dev: DeviceScalars,
    steps: dict[str, int] | None = None,
) -> None:
    """Validate every key and value of a ``log()`` call (raising the precise error), then append all or nothing.

    The error raised is the user's alone: nothing internal chained to it (e.g. ``float()``
    failing inside ``to_metric_value``). The step is checked here too: the hot path's own check
    takes any non-negative int, and one past int64 fails only when it is appended. With ``steps``
    (a call without a step whose keys the ring numbers apart), each key goes at its own (-1: the sender's).
    """
    try:
        if step >= 0:
            check_step(step)
        for k in data:
            if k not in keys.series:
                keys.check_new(k)
        tensors = {k: check_tensor(k, v) for k, v in data.items() if is_tensor(v)}
        clean = {k: to_metric_value(k, v) for k, v in data.items() if k not in tensors}
    except (TypeError, ValueError) as e:
        raise e from None
    try:
        for k, v in data.items():
            c = cols.get(k) or new_column(k)
            if k in tensors:
                dev.defer(k, v, c[0], c[1])  # checked above: cannot raise now
            else:
                c[1].append(clean[k])
            c[0].append(step if steps is None else steps[k])
    except BaseException:  # a signal's exception (Ctrl-C): keep the columns paired
        unpair(cols, data, dev)
        raise


def unpair(cols: dict[str, Column], keys: Iterable[str], dev: DeviceScalars) -> None:
    """Drop a value appended without its step in the columns of ``keys``.

    An exception a signal raises (Ctrl-C's ``KeyboardInterrupt``) can land between a point's two
    appends; a column left with more values than steps would pair each later value with the
    step before it.
    """
    _cut_back([(c, len(c[0])) for k in keys if (c := cols.get(k)) is not None], dev)


def undo_point(e: BaseException, cols: dict[str, Column], key: str, step: int, dev: DeviceScalars) -> BaseException:
    """``append()`` failed with ``e`` midway through a point: drop what it appended; returns the error to raise.

    That is ``e`` itself (a signal's exception, Ctrl-C, between the value and the step: re-raised
    as it is), or for a step past int64, which the hot path's check lets through (any non-negative
    int) and the step array refuses with ``OverflowError``, the ``ValueError`` a bad step gets
    (raised ``from None`` by the caller: nothing chained to it).
    """
    unpair(cols, (key,), dev)
    if type(e) is OverflowError:
        try:
            check_step(step)
        except ValueError as bad:
            return bad
    return e


def rollback(cols: dict[str, Column], data: dict[str, object], failed: object, dev: DeviceScalars) -> None:
    """Undo the points of keys before ``failed`` that this ``log()`` call already appended.

    ``failed`` is :data:`NOTHING_YET` when the exception came before the first key (nothing to
    undo). A signal's exception right after ``failed``'s step was appended keeps that one point
    (its column stays paired; the call cannot tell it from an earlier point at the same step).
    A signal's exception inside the undo (Ctrl-C while a rejected call is undone) does not leave it
    half done: the undo cuts each column back to a length taken before it starts, which a second
    pass repeats harmlessly.
    """
    if failed is NOTHING_YET:
        return
    ends = None
    try:
        ends = _ends(cols, data, failed)
        _cut_back(ends, dev)
    except BaseException:
        if ends is None:  # the exception came before any cut: the lengths are still the call's
            ends = _ends(cols, data, failed)
        _cut_back(ends, dev)
        raise


def _ends(cols: dict[str, Column], data: dict[str, object], failed: object) -> list[tuple[Column, int]]:
    """The length each column of a failed ``log()`` call had before it: one point fewer for the keys
    before ``failed``, the step count for ``failed``'s own column (its value may be in without its
    step; a key that is not a str never got a column: its validation is what failed)."""
    ends = []
    for k in data:
        if k == failed:
            break
        c = cols[k]
        ends.append((c, len(c[0]) - 1))
    last = cols.get(failed) if isinstance(failed, str) else None
    if last is not None:
        ends.append((last, len(last[0])))
    return ends


def _cut_back(ends: list[tuple[Column, int]], dev: DeviceScalars) -> None:
    """Cut each column back to its length in ``ends`` (a deferred tensor's read too); twice is once.

    The steps go before the values: cut short between the two, a column has a value too many, as
    after an interrupted append, and :func:`unpair` or a second pass mends it.
    """
    for c, n in ends:
        dev.discard_from(c[0], n)
        del c[0][n:]
        del c[1][n:]


def wait_for_room(b: Buffer, sender: SenderThread | None, rank: int, endpoint: str | None) -> None:
    """Block until the buffer has room (the sender took or acknowledged points), warning after 5 s.

    Raises:
        CoordinatorError: the delivery failed for good. ClosedError: no sender thread to make room.
    """
    t0 = time.monotonic()
    warned = False
    while b.pending >= b.max_points:
        if b.fatal is not None:
            raise b.fatal
        if not warned and time.monotonic() - t0 > 5:
            _log.warning(
                "rank %d: log() blocked: %d points not yet acknowledged by the aggregator at %s (max_buffer_points=%d)",
                rank,
                b.pending,
                endpoint,
                b.max_points,
            )
            warned = True
        if sender is None or not sender.is_alive():
            raise ClosedError("the sender thread is not running; cannot make room")
        b.cond.wait(0.5)
