"""The shared-keys benchmark times every pattern, reads every checked series back, and fails on a lost point."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from benchmarks import shared_keys as bench
from coordinator.transport.ringrows import RowWriter


@pytest.mark.parametrize("pattern", bench.PATTERNS)
def test_each_pattern_is_timed_and_read_back(pattern: str) -> None:
    t = bench.measure(pattern, 1, 2)
    assert set(t) == {"drain", "commit", "emit", "total", "per_point"}
    assert all(v > 0 for v in t.values())


def test_a_point_that_never_reached_the_store_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RowWriter.row

    def lossy(self: RowWriter, keys: tuple[str, ...], step: int, values: Iterable[float]) -> bool:
        if step == 119 and "epoch" in keys and len(keys) == 3:
            return True  # said written, never written
        return real(self, keys, step, values)

    monkeypatch.setattr(RowWriter, "row", lossy)
    with pytest.raises(AssertionError, match="val/loss of rank 0 read back"):
        bench.measure("epoch", 1, 2)
    with pytest.raises(ValueError, match="not one of"):
        bench.measure("nope", 1, 2)
