"""The aggregator process's command line: ``--run ID --config JSON``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.aggregator.main import parse_args


def test_parse_args_builds_the_config(tmp_path: Path) -> None:
    """The run id comes from --run, every other field from --config."""
    cfg = parse_args(["--run", "r1", "--config", json.dumps({"store_path": str(tmp_path), "world_size": 3})])
    assert (cfg.run_id, cfg.store_path, cfg.world_size) == ("r1", str(tmp_path), 3)


def test_parse_args_requires_run_and_config() -> None:
    """A missing --config is a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as ei:
        parse_args(["--run", "r1"])
    assert ei.value.code == 2
