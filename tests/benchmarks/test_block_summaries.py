"""The block-summaries micro-benchmark times real calls and fails on a summary that is not the definition's."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import block_summaries as bench


def test_each_call_is_timed_and_checked() -> None:
    t = bench.measure(3, 100, 0.0, 4)
    assert len(t) == 4 and all(x > 0 for x in t)


def test_a_summary_that_is_not_the_definitions_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.block_summaries

    def wrong_zero(b: Any) -> list[Any]:
        return [(*s[:6], -0.0, *s[7:]) for s in real(b)]  # the minimum's zero with the wrong sign

    monkeypatch.setattr(bench, "block_summaries", wrong_zero)
    with pytest.raises(AssertionError, match="not the definition's"):
        bench.measure(2, 80, 0.0, 1)
