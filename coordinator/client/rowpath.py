"""Which path a ring row takes: the C extension's common case (``_fastrow.c``), or the Python one.

:meth:`RingLog._row <coordinator.client.ringlog.RingLog._row>` is the ring row's whole logic. The
extension, built at install where a C compiler is at hand (optional: pyproject.toml), takes its most
frequent case in one call: a dict of plain numbers whose frame is in the ring, not held, with room
before the writer's next claim (~0.3 µs a scalar row against ~1.1 in Python). It writes the same
record and stores the same attributes, and hands every other call to the Python method
(tests/client/test_fastrow.py holds the two to the same records). :func:`fast_calls` goes one call further:
the extension's ``Log`` stands in a run's ``__dict__`` for ``Run.log`` and ``Run._append``, and
:func:`c_method` in their classes for ``Handle.append`` (through the run's ``Log``) and ``Run.__getitem__``'s
lookup of a handle: ``run[key].append(x, step=s)`` reaches that case without a Python frame, the buffer's lock
taken without blocking (tests/client/test_fastcalls.py: the same answers and stored points). A run whose calls go
over the socket (no ring, or one the aggregator does not read) has their common case there taken by the same
``Log``: a point appended to its key's column in the buffer, a dict's row to its frame
(tests/client/test_fastsocket.py).
``COORDINATOR_PUREPYTHON=1`` keeps every row, and every call, on the Python path (read as a ring is opened, by
:func:`fast_calls` as a run starts, and by :func:`c_method` as the client is imported).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from coordinator.client.hotpath import PLAIN
from coordinator.core.env import COORDINATOR_PUREPYTHON

if TYPE_CHECKING:
    from coordinator.client._fastrow import Frame, Log, Method, Rows
    from coordinator.transport.buffer import Buffer

__all__ = ["PURE_ENV", "FrameRecord", "MakeFrame", "built", "c_method", "fast_calls", "row_path"]

PURE_ENV = COORDINATOR_PUREPYTHON
"""Set to 1: every ring row takes the Python path, the extension built or not."""

_OTHER_PLAIN = tuple(PLAIN - {float, int, bool})
"""The value types a row takes besides float, int and bool (numpy's scalars), as the extension checks them."""

Row = Callable[[dict[str, Any], int], bool]


class FrameRecord(Protocol):
    """A ring frame's seven items, indexed: a list on the Python path, the extension's ``Frame`` with it."""

    def __getitem__(self, i: int, /) -> Any: ...

    def __setitem__(self, i: int, v: Any, /) -> None: ...


MakeFrame = Callable[[int, tuple[Any, ...], int, int, int, int, int], FrameRecord]


def _list_frame(
    fid: int, framing: tuple[Any, ...], seq: int, step: int, nkeys: int, held: int, solo: int
) -> FrameRecord:
    return [fid, framing, seq, step, nkeys, held, solo]


def _load() -> tuple[type[Rows], type[Frame], type[Log], type[Method]] | None:
    try:
        from coordinator.client._fastrow import Frame, Log, Method, Rows
    except ImportError:  # installed without a compiler: the Python path
        return None
    return Rows, Frame, Log, Method


_FAST = _load()


def built() -> bool:
    """Whether the extension was built and imports (``coordinator doctor`` says so)."""
    return _FAST is not None


def row_path(log: object, writer: object, python: Row) -> tuple[Row, MakeFrame]:
    """``python`` (a RingLog's ``_row``) and lists for frames, or the extension's ``row`` over it (the common
    case in C, every other call handed to ``python``) and its ``Frame``. ``log`` and ``writer`` are the RingLog
    and its RingWriter, whose attributes the C path reads and stores as ``python`` does."""
    if _FAST is None or os.environ.get(PURE_ENV) == "1":
        return python, _list_frame
    rows, frame, _, _ = _FAST
    return rows(log, writer, _OTHER_PLAIN, python).row, frame


def fast_calls(run: object, base: type, ring: object, buf: Buffer) -> dict[str, Callable[..., None]]:
    """The extension's ``Log`` objects for ``run`` (a ``Run`` whose ``ring``'s ``row`` is a ``Rows``: the C path
    as ``row_path`` chose it; or one without a ring), to put in its ``__dict__`` over the methods they stand for:
    ``log`` and ``_append`` (``Handle.append``'s call) take the ring's common case in one C call, without the
    methods' frames, the lock of ``buf`` (the run's buffer) taken without blocking. While the run has no ring
    that is read, they take the socket path's common case the same way: a point into its key's column of the
    buffer, a dict's row into its frame there, both made before by the Python path. They hand every other call to
    the method untouched. A method a subclass of ``base`` (``Run``) overrides keeps its own; without the C path
    (or with ``COORDINATOR_PUREPYTHON=1``), none."""
    rows = None if ring is None else getattr(getattr(ring, "row", None), "__self__", None)
    if _FAST is None or os.environ.get(PURE_ENV) == "1" or (ring is not None and type(rows) is not _FAST[0]):
        return {}
    return {
        name: _FAST[2](run, ring, rows, buf.lock, getattr(run, name), name == "_append", buf, _OTHER_PLAIN)
        for name in ("log", "_append")
        if getattr(type(run), name) is getattr(base, name)
    }


F = TypeVar("F", bound=Callable[..., Any])


def c_method(kind: Literal["item", "append"]) -> Callable[[F], F]:
    """A decorator: the method it decorates as the extension's ``Method`` over it, where the extension is built.

    ``"item"`` is for ``Run.__getitem__``: a path's handle already made is returned from ``run._handles`` in C.
    ``"append"`` is for ``Handle.append``: the ring's common case (a value that is not a ``str``, an exact int
    step or none, no policy) goes through the handle's run's ``Log`` for ``Run._append`` (:func:`fast_calls`).
    Every other call goes to the function, untouched; read from an instance it is bound, as the function would be,
    and ``inspect``, ``help()`` see the function's signature and text. A run without that ``Log`` (no ring,
    ``COORDINATOR_PUREPYTHON=1`` at its start) gets the function for every ``append``."""

    def make(fn: F) -> F:
        if _FAST is None or os.environ.get(PURE_ENV) == "1":
            return fn
        return cast(F, _FAST[3](kind, fn))

    return make
