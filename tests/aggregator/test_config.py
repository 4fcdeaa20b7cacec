"""AggregatorConfig: validation, defaults from Settings, the --config JSON form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregator import AggregatorConfig
from coordinator.settings import DEFAULTS
from tests.aggregator.helpers import RUN


@pytest.mark.parametrize(
    "kw", [{"world_size": 0}, {"run_id": ""}, {"policies": {"x": "median"}}, {"default_policy": "avg"}]
)
def test_config_rejects_bad_values(tmp_path: Path, kw: dict[str, Any]) -> None:
    """A non-positive world, an empty run id or an unknown policy is a ValueError."""
    base: dict[str, Any] = {"run_id": RUN, "store_path": str(tmp_path / "run.db"), "world_size": 2}
    with pytest.raises(ValueError):
        AggregatorConfig(**{**base, **kw})


def test_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    """Every tunable the client passes from Settings defaults to that setting's default."""
    cfg = AggregatorConfig(run_id="r", store_path=str(tmp_path / "run.db"), world_size=1)
    assert (cfg.group_timeout_s, cfg.liveness_timeout_s, cfg.straggler_lag_s, cfg.stop_grace_s) == (
        DEFAULTS.group_timeout_s,
        DEFAULTS.liveness_timeout_s,
        DEFAULTS.straggler_lag_s,
        DEFAULTS.stop_grace_s,
    )
    assert (cfg.durable, cfg.nice, cfg.forward_timeout_s, cfg.default_policy) == (
        DEFAULTS.durable,
        DEFAULTS.aggregator_nice,
        DEFAULTS.forward_timeout_s,
        DEFAULTS.default_policy,
    )


def test_from_json_reads_the_command_line_form(tmp_path: Path) -> None:
    """--config JSON (every field but run_id) gives the same config; an unknown key is a TypeError."""
    fields = {
        "store_path": str(tmp_path / "run.db"),
        "world_size": 4,
        "policies": {"acc/*": "max"},
        "backends": {"tensorboard": {}},
        "spool_root": "/s",
        "curve": True,
        "group_timeout_s": 2.5,
    }
    cfg = AggregatorConfig.from_json("r", json.dumps(fields))
    assert cfg == AggregatorConfig(run_id="r", **fields)
    with pytest.raises(TypeError):
        AggregatorConfig.from_json("r", json.dumps({**fields, "no_such_field": 1}))
