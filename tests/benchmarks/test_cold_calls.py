"""The paced-call breakdown times each variant's calls and checks every point it logged was acknowledged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.cold_calls import VARIANTS, main, measure


@pytest.mark.parametrize("same_key", [False, True])
def test_a_repeat_times_every_variant_and_acknowledges_every_point(tmp_path: Path, same_key: bool) -> None:
    p = measure(30, tmp_path, same_key)  # raises unless every logged point was acknowledged
    assert set(p.quantiles) == set(VARIANTS) and p.calls == 300
    for p50, p90, p99 in p.quantiles.values():
        assert 0 < p50 <= p90 <= p99


def test_the_run_takes_a_ring_where_the_environment_turns_them_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``COORDINATOR_RINGS=0`` (CI's socket step) must not make the ``row`` variant the socket's: ``measure``
    raises unless every row went into the ring. The environment is as it was afterwards."""
    monkeypatch.setenv("COORDINATOR_RINGS", "0")
    assert measure(3, tmp_path).calls == 30
    assert os.environ["COORDINATOR_RINGS"] == "0"


def test_main_prints_each_repeat_and_the_medians(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--steps", "9", "--repeats", "1", "--same-key"])
    out = capsys.readouterr().out
    assert "repeat 1: run.log p50" in out and "paced scalar calls (one key), median of 1 p50s: run.log" in out
