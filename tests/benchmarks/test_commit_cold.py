"""The cold-commit micro-benchmark times real commits and checks that the store holds them."""

from __future__ import annotations

import pytest

from benchmarks.commit_cold import measure
from coordinator.journal.store import LocalStore


def test_each_phase_times_its_commits() -> None:
    t = measure(5, 0.001, ranks=2, keys=10, steps=3)
    assert len(t["warm"]) == 5 and len(t["cold"]) == 5
    assert all(x > 0 for x in t["warm"] + t["cold"])


def test_a_store_short_of_points_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = LocalStore.staged_points
    monkeypatch.setattr(LocalStore, "staged_points", lambda self: real(self) - 1)
    with pytest.raises(AssertionError, match="staged points"):
        measure(2, 0.0, ranks=1, keys=2, steps=1)
