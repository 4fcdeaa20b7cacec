"""The writer lock: one writer per run directory; the next one waits, then gets in."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.aggregator.lock import WriterLock
from coordinator.errors import SinkError


def test_a_second_writer_times_out_until_the_first_releases(tmp_path: Path) -> None:
    """While held, another WriterLock raises SinkError after its timeout; after release it is taken."""
    path = tmp_path / "run" / "writer.lock"
    first = WriterLock(path, 1.0)
    with pytest.raises(SinkError, match="another writer"):
        WriterLock(path, 0.1)
    first.release()
    first.release()  # idempotent
    second = WriterLock(path, 0.1)
    second.release()
