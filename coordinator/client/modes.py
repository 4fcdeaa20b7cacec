"""The runs of the modes that change what a call does: ``disabled``, ``sync`` and ``read-only``.

(``async`` and ``offline`` are the plain :class:`~coordinator.client.run.Run`; offline differs
only in its sender, which spools instead of sending.)
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.client.run import Run
from coordinator.errors import ClosedError
from coordinator.journal.reader import MAX_PAGE_POINTS
from coordinator.journal.store import LocalStore

__all__ = ["DisabledRun", "ReadOnlyRun", "SyncRun"]


class DisabledRun(Run):
    """``mode="disabled"``: every call is a no-op."""

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        return None

    def _append(self, key: str, value: object, step: int | None) -> None:
        return None

    def _append_text(self, key: str, text: object, step: int | None, block: bool = True) -> bool:
        return False

    def __setitem__(self, path: str, value: object) -> None:
        return None


class SyncRun(Run):
    """``mode="sync"``: every call returns only once it is durable."""

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        super().log(data, step, policy=policy)
        self.wait()

    def _append(self, key: str, value: object, step: int | None) -> None:
        super()._append(key, value, step)
        self.wait()

    def _append_text(self, key: str, text: object, step: int | None, block: bool = True) -> bool:
        kept = super()._append_text(key, text, step, block)
        if block:  # the console capture's lines (block=False) are not waited for, line by line
            self.wait()
        return kept

    def __setitem__(self, path: str, value: object) -> None:
        super().__setitem__(path, value)
        self.wait()

    def _upload(self, key: str, src: Path, max_copy_bytes: int | None) -> dict[str, Any]:
        out = super()._upload(key, src, max_copy_bytes)
        self.wait()
        return out


class ReadOnlyRun(Run):
    """``mode="read-only"``: a stored run opened from the store, without an aggregator.

    Call :meth:`open` once after construction.
    """

    _store: LocalStore

    def open(self) -> None:
        """Read the run's identity, fields and last values from its store."""
        assert self.store_path is not None
        self._store = LocalStore(self.store_path, readonly=True)
        info = self._store.run_info()
        self.name = info.name
        self.project = info.project
        self.world_size = info.world_size
        self._view.load(self._store)

    def log(self, data: Mapping[str, object], step: int | None = None, *, policy: str | None = None) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def _append(self, key: str, value: object, step: int | None) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def _append_text(self, key: str, text: object, step: int | None, block: bool = True) -> bool:
        raise ClosedError(f"run {self.id} is open read-only")

    def __setitem__(self, path: str, value: object) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def sync(self, wait: bool = False, timeout: float | None = 60.0) -> None:
        self._store.close()
        self.open()

    def _fetch_values(
        self, key: str, rank: int, timeout: float | None
    ) -> tuple[array[int], array[float]] | tuple[array[int], list[str]]:
        if self._store.is_text(key):
            if rank < 0:
                raise ValueError(f"{key!r} is a text series: texts are per rank; pass rank=")
            texts = self._store.texts(key, rank)
            return array("q", [s for s, _ in texts]), [t for _, t in texts]
        steps: array[int] = array("q")
        values: array[float] = array("d")
        after: int | None = -1
        while after is not None:  # page by page: the store never holds the series in memory twice
            page = self._store.values_page(key, rank, after, MAX_PAGE_POINTS)
            steps.extend(page.steps)
            values.extend(page.values)
            after = page.next
        return steps, values

    def fail(self, reason: str | BaseException) -> None:
        raise ClosedError(f"run {self.id} is open read-only")

    def stop(self, timeout: float | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._store.close()
