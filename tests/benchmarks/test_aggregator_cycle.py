"""The in-process aggregator cycle times each part of the paced job's second and reads every point back."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import aggregator_cycle
from benchmarks.aggregator_cycle import _check, measure


def test_each_part_is_timed_and_the_run_read_back() -> None:
    out = measure(2, 5)
    assert set(out) == {"batch", "commit", "emit", "total"}
    assert all(v > 0 for v in out.values())
    assert out["total"] == pytest.approx(out["batch"] + out["commit"] + out["emit"])


def test_many_ranks_are_fed_and_read_back() -> None:
    """``--ranks``: every rank says hello and sends; the read-back's mean is over all of them."""
    out = measure(1, 2, ranks=37)
    assert out["emit"] > 0


def test_longer_flushes_carry_every_step() -> None:
    """``every``: fewer, larger batches; the read-back still finds every step once."""
    out = measure(1, 3, ranks=3, every=4)
    assert out["batch"] > 0 and out["commit"] > 0


def test_the_check_fails_on_a_missing_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back is not a formality: a run checked for one step more than it holds fails."""
    seen: list[tuple[Path, int]] = []

    def keep(path: Path, keys: tuple[str, ...], steps: int, ranks: int) -> None:
        target = tmp_path / "run.db"
        target.write_bytes(path.read_bytes())
        seen.append((target, steps))
        _check(path, keys, steps, ranks)

    monkeypatch.setattr(aggregator_cycle, "_check", keep)
    measure(1, 3)
    (path, steps) = seen[0]
    with pytest.raises(AssertionError, match="read back"):
        _check(path, ("train/m000", "train/m001", "train/m002"), steps + 1, 4)
