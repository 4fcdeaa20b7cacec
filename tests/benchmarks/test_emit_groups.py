"""The emit-groups micro-benchmark times both ways and fails when the groups emitted together differ."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import emit_groups as bench


def test_both_ways_are_timed_and_agree() -> None:
    t = bench.measure(5, 8, 3, 10, 4, cold=False)
    assert set(t) == {"emit", "rows"}
    assert all(len(v) == 4 and all(x > 0 for x in v) for by_way in t.values() for v in by_way.values())


def test_groups_emitted_together_that_differ_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.emit_groups

    def lossy(*args: Any) -> Any:
        return real(*args)[1:]  # one group's block lost

    monkeypatch.setattr(bench, "emit_groups", lossy)
    with pytest.raises(AssertionError, match="emitted together differ"):
        bench.measure(5, 8, 3, 10, 2, cold=False)
