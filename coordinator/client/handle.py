"""``Handle``: a path inside a run (``run["train/loss"]``) to append to, assign, upload or fetch."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from coordinator.client import frames
from coordinator.client.rowpath import c_method
from coordinator.client.tags import change_tags, tag_args, view_tags
from coordinator.client.view import LocalView
from coordinator.core.tags import TAGS_PATH
from coordinator.errors import missing_extra
from coordinator.journal.store import MAIN_RANK

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["Handle", "HandleTarget"]


class HandleTarget(Protocol):
    """What a handle needs of its run (``Run`` provides it; a protocol keeps the import one-way)."""

    _view: LocalView

    @property
    def id(self) -> str: ...

    @property
    def mode(self) -> str: ...

    def __getitem__(self, path: str) -> Handle: ...

    def __setitem__(self, path: str, value: object) -> None: ...

    def _declare_policy(self, keys: Iterable[object], policy: str) -> None: ...

    def _append(self, key: str, value: object, step: int | None) -> None: ...

    def _append_text(self, key: str, text: object, step: int | None, block: bool = True) -> bool: ...

    def _upload(self, key: str, src: Path, max_copy_bytes: int | None) -> dict[str, Any]: ...

    def _fetch_values(
        self, key: str, rank: int, timeout: float | None
    ) -> tuple[array[int], array[float]] | tuple[array[int], list[str]]: ...

    def _write_sys(self, items: list[tuple[str, Any]], view: Callable[[dict[str, Any]], None]) -> None: ...

    def wait(self, timeout: float | None = None) -> None: ...


class Handle:
    """A path inside a run (``run["train/loss"]``): append to a series, assign or fetch a field.

    Handles are cached per path, so ``run["k"].append(v)`` in a loop costs one dict lookup.
    """

    __slots__ = ("_path", "_run")

    def __init__(self, run: HandleTarget, path: str) -> None:
        self._run = run
        self._path = path

    def __repr__(self) -> str:
        return f"<Handle {self._path!r}>"

    def __getitem__(self, sub: str) -> Handle:
        return self._run[f"{self._path}/{sub}"]

    def __setitem__(self, sub: str, value: object) -> None:
        self._run[f"{self._path}/{sub}"] = value

    @c_method("append")  # its common case in one C call with the extension (client/rowpath.py)
    def append(self, value: object, step: int | None = None, *, policy: str | None = None) -> None:
        """Append one point to this series (hot path; see :meth:`Run.log`).

        Args:
            value: a number, bool, numpy scalar or 1-element tensor; or a ``str``, which makes
                the key a text series (per rank, never reduced; up to 64 KiB of UTF-8 each).
            step: non-negative int; omitted: this rank's previous step for the key + 1.
            policy: cross-rank reduction of this key (see :meth:`Run.log`; not for text).

        Raises:
            TypeError: a str for a numeric key or a number for a text key (a key is one or the
                other for the whole run). ValueError: a text over 64 KiB. Nothing is kept then.
        """
        if value.__class__ is str:
            if policy is not None:
                raise ValueError(f"{self._path!r}: a text series has no reduction policy")
            self._run._append_text(self._path, value, step)
            return
        if policy is not None:
            self._run._declare_policy((self._path,), policy)
        self._run._append(self._path, value, step)

    def extend(self, values: Iterable[object], steps: Iterable[int] | None = None) -> None:
        """Append several points (``steps`` as long as ``values``, or omitted)."""
        vals = list(values)
        st: list[int | None] = [None] * len(vals) if steps is None else list(steps)
        if len(st) != len(vals):
            raise ValueError(f"extend: {len(vals)} values but {len(st)} steps")
        for v, s in zip(vals, st, strict=True):
            if v.__class__ is str:
                self._run._append_text(self._path, v, s)
            else:
                self._run._append(self._path, v, s)

    def upload(self, path: str | os.PathLike[str], *, max_copy_bytes: int | None = None) -> dict[str, Any]:
        """Store a file with the run (``run["model/ckpt"].upload("ckpt.pt")``); returns its record.

        The file is hashed (sha256) and copied, content-addressed, into the run's artifact
        directory (``<dir>/runs/<id>/artifacts/``); files larger than ``max_copy_bytes`` (default:
        the run's ``Settings.artifact_max_copy_bytes``, 100 MB) are recorded as a reference (path,
        size, hash) instead, with a warning. The record is a field (``fetch()`` returns it) and
        backends that take files (MLflow) receive the copy. Blocks while hashing and copying;
        call it from the training thread between steps.

        Raises:
            FileNotFoundError: no such file. ValueError: not a regular file.
        """
        return self._run._upload(self._path, Path(path), max_copy_bytes)

    def assign(self, value: object) -> None:
        """Set this field (same as ``run[path] = value``)."""
        self._run[self._path] = value

    def add(self, *tags: str | Iterable[str]) -> None:
        """Add tags to the run's tag set: ``run["sys/tags"].add("a", "b")`` (or a list of tags).

        Only ``sys/tags`` is a set. Tags from every rank are a union, never a conflict; this
        rank sees its change at once, the others' after ``sync()``.

        Raises:
            TypeError: another path, no tag, or a tag that is not a str.
            ValueError: an empty tag, or one longer than 128 characters.
            ClosedError: the run is read-only or stopped.
        """
        self._tags("add", tags)

    def remove(self, *tags: str | Iterable[str]) -> None:
        """Remove tags from the run's tag set (``run["sys/tags"].remove("a")``), whichever rank added them.

        Removing a tag the run does not have does nothing. Raises as :meth:`add`.
        """
        self._tags("remove", tags)

    def _tags(self, op: str, tags: tuple[object, ...]) -> None:
        if self._path != TAGS_PATH:
            raise TypeError(f"{op}() is for the tag set {TAGS_PATH!r}; {self._path!r} is not a set")
        change_tags(self._run, op, tag_args(tags, f"{TAGS_PATH}.{op}()"))

    def fetch(self) -> Any:
        """The field's value in this rank's view (own writes, plus others' after ``sync()``).

        For a series, its last reduced value as of the last ``sync()``; for ``sys/tags``, the set
        of tags (empty when none were set).

        Raises:
            KeyError: nothing known under this path.
        """
        if self._path == TAGS_PATH:
            return view_tags(self._run._view.fields)
        return self._run._view.fetch(self._path)

    def fetch_last(self) -> float | str:
        """The last value of the reduced series as of the last ``sync()``; of a text series, the
        last text this rank appended (a read-only run: the lowest rank's last text)."""
        return self._run._view.fetch_last(self._path)

    @overload
    def fetch_values(
        self,
        rank: int | None = None,
        timeout: float | None = 60.0,
        *,
        as_numpy: Literal[False] = False,
        as_frame: Literal[False] = False,
    ) -> list[tuple[int, float]] | list[tuple[int, str]]: ...

    @overload
    def fetch_values(
        self,
        rank: int | None = None,
        timeout: float | None = 60.0,
        *,
        as_numpy: Literal[True],
        as_frame: Literal[False] = False,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]: ...

    @overload
    def fetch_values(
        self,
        rank: int | None = None,
        timeout: float | None = 60.0,
        *,
        as_numpy: Literal[False] = False,
        as_frame: Literal[True],
    ) -> Any: ...

    def fetch_values(
        self, rank: int | None = None, timeout: float | None = 60.0, *, as_numpy: bool = False, as_frame: bool = False
    ) -> list[tuple[int, float]] | list[tuple[int, str]] | tuple[NDArray[np.int64], NDArray[np.float64]] | Any:
        """The stored series in step order: ``(step, value)`` pairs, or two numpy arrays.

        A text series gives ``(step, text)`` pairs of one rank (``rank=`` is required: texts are
        never reduced), each step once (its latest text; a restarted rank's re-logged steps
        replace the earlier ones), read in pages bounded in count and bytes.

        Args:
            rank: ``None`` for the reduced main series, or one rank's own points.
            timeout: seconds for the whole answer (it comes in pages of up to a million points).
            as_numpy: return ``(steps, values)`` as an int64 and a float64 numpy array instead
                of a list of tuples (16 bytes a point instead of about 100; needs numpy).
            as_frame: return a pandas DataFrame with columns ``step`` and ``value`` (as Neptune's
                ``fetch_values`` does; needs pandas, the ``export`` extra).

        Blocks until the aggregator answers. Reads what is committed: call ``wait()`` first to
        include this rank's own latest points (groups still waiting for other ranks are not in
        the main series yet).

        Raises:
            MissingExtraError: ``as_numpy=True`` without numpy, ``as_frame=True`` without pandas installed.
        """
        if type(as_numpy) is not bool:
            raise TypeError(f"as_numpy must be a bool, got {type(as_numpy).__name__}")
        if type(as_frame) is not bool:
            raise TypeError(f"as_frame must be a bool, got {type(as_frame).__name__}")
        if as_frame and as_numpy:
            raise ValueError("as_numpy=True and as_frame=True exclude each other")
        pd = frames.pandas() if as_frame else None
        if as_numpy:
            try:
                import numpy as np
            except ImportError as e:
                raise missing_extra("fetch_values(as_numpy=True)", "torch", e) from e
        if rank is None and self._path in self._run._view.texts_last:
            raise ValueError(f"{self._path!r} is a text series: texts are per rank; pass rank=")
        steps, values = self._run._fetch_values(self._path, MAIN_RANK if rank is None else rank, timeout)
        if pd is not None:
            return frames.to_frame(pd, steps, values)
        if isinstance(values, list):  # a text series
            if as_numpy:
                raise TypeError(f"{self._path!r} is a text series; as_numpy=True is for numeric series")
            return list(zip(steps, values, strict=True))
        if as_numpy:
            return np.frombuffer(steps, dtype=np.int64), np.frombuffer(values, dtype=np.float64)
        return list(zip(steps, values, strict=True))
