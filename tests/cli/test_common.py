"""What the commands share: run references and --option pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.cli.common import human_bytes, parse_duration, parse_options, resolve_run
from coordinator.errors import CoordinatorError
from coordinator.journal.store import run_dir


def _run(root: Path, run_id: str) -> None:
    Aggregator(AggregatorConfig(run_id=run_id, store_path=str(run_dir(root, run_id) / "run.db"), world_size=1)).close()


def test_resolve_run_by_id_prefix_and_latest(tmp_path: Path) -> None:
    """An exact id, a unique prefix, or 'latest'; an ambiguous or unknown one is an error."""
    with pytest.raises(CoordinatorError, match="no runs"):
        resolve_run(tmp_path, "latest")
    _run(tmp_path, "alpha-1")
    _run(tmp_path, "alpha-2")
    assert resolve_run(tmp_path, "alpha-1").id == "alpha-1"
    assert resolve_run(tmp_path, "alpha-2").id == "alpha-2"
    assert resolve_run(tmp_path, "latest").id in ("alpha-1", "alpha-2")
    with pytest.raises(CoordinatorError, match="several"):
        resolve_run(tmp_path, "alpha")
    with pytest.raises(CoordinatorError, match="no runs match"):
        resolve_run(tmp_path, "beta")


def test_parse_options_pairs() -> None:
    """key=value pairs (the value may contain '='); a pair without '=' or key is an error."""
    assert parse_options(None) == {}
    assert parse_options(["a=1", " b =x=y"]) == {"a": "1", "b": "x=y"}
    for bad in ("novalue", "=v"):
        with pytest.raises(CoordinatorError):
            parse_options([bad])


def test_durations_and_sizes() -> None:
    """Durations need a unit (s, m, h, d, w); sizes are binary units."""
    assert parse_duration("30d") == 30 * 86400.0
    assert parse_duration(" 1.5h ") == 5400.0
    assert parse_duration("90m") == parse_duration("5400s")
    for bad in ("30", "d", "-1d", "1y", ""):
        with pytest.raises(CoordinatorError, match="not a duration"):
            parse_duration(bad)
    assert human_bytes(0) == "0 B" and human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(5 * 2**30) == "5.0 GiB"
