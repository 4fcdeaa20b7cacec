"""The copy micro-benchmark times real copies into a real file and checks that the file reads them all back."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import copy_cost
from benchmarks.copy_cost import measure
from coordinator.transport.copyread import CopiedGeneration


@pytest.mark.parametrize("keys", [1, 3])
def test_each_copy_is_timed_and_the_file_reads_every_point_back(keys: int, tmp_path: Path) -> None:
    t = measure(6, 0.001, points=4, keys=keys, directory=tmp_path)
    assert len(t) == 6 and all(x > 0 for x in t)


def test_a_copy_file_short_of_a_point_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = copy_cost.read_copies

    def short(d: str) -> list[CopiedGeneration]:
        [g] = real(d)
        steps, values = g.columns["loss"]
        g.columns["loss"] = (steps[:-1], values[:-1])
        return [g]

    monkeypatch.setattr(copy_cost, "read_copies", short)
    with pytest.raises(AssertionError, match="read back 7 points"):
        measure(2, 0.0, points=4, directory=tmp_path)
